//! Dataset policies: what each column may be used for, its bounds and public key sets, the
//! privacy unit, and the dataset-wide budget. The bureau writes a policy per dataset; the gate
//! reads nothing else to decide what a job may do with a column.
//!
//! A policy is checked against the file's real schema ([`Policy::check`]) and its bounds
//! against the table's size ([`Policy::check_sums`]) before a dataset is registered, so every
//! sum the gate computes later is finite and cannot overflow.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::NaiveDate;
use datafusion::arrow::datatypes::{DataType, Schema};
use serde::{Deserialize, Serialize};

use crate::ids::DatasetId;

/// Most columns a registered dataset may have.
pub const DATASET_COLUMNS_MAX: usize = 512;
/// Most entries in one public key set.
pub const KEY_SET_ENTRIES_MAX: usize = 10_000;

/// The largest total a sum over an integer column may reach: 2^62, half of `i64::MAX`.
///
/// A bounded column's values are clamped into `[lo, hi]`, so a sum over a table of `rows`
/// rows lies within `rows × max(|lo|, |hi|)`. The gate adds these in `i64`; keeping the total
/// within half the range leaves the other half for the noise added to it, so neither the
/// exact sum nor the noisy one can overflow. Registration refuses bounds that break this at
/// the table's row count; approval refuses contribution limits whose sensitivity breaks it
/// (`templates::approve`).
pub const SUM_INT_ABS_MAX: f64 = 4_611_686_018_427_387_904.0;

/// The largest total a sum over a floating-point column may reach: 2^53.
///
/// Below 2^53 every integer is exact in an `f64`, so a sum of bounded values is finite and its
/// rounding error stays below one unit of the column per value added, and noise calibrated to
/// it has a finite scale. Bounds like ±1.7e308 would make sums infinite, and every job over
/// the column would fail after spending its ε; they are refused at registration instead.
pub const SUM_FLOAT_ABS_MAX: f64 = 9_007_199_254_740_992.0;

/// The largest total a sum over a column of `data_type` may reach, and how to name that limit
/// in a message.
pub fn sum_abs_max(integer: bool) -> (f64, &'static str) {
    if integer {
        (SUM_INT_ABS_MAX, "2^62 for an integer column")
    } else {
        (SUM_FLOAT_ABS_MAX, "2^53 for a floating-point column")
    }
}

/// A number for a message: plain when it is a modest integer, else in scientific notation.
pub fn show_number(value: f64) -> String {
    if !value.is_finite() {
        "infinity".into()
    } else if value.fract() == 0.0 && value.abs() < 1e12 {
        format!("{value}")
    } else {
        format!("{value:.3e}")
    }
}

/// What a column may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Directly identifies someone: never output, never grouped by, never filtered on.
    Identifier,
    /// Could identify someone in combination: may be a group key, subject to k-anonymity.
    Quasi,
    /// Only inside noisy aggregates, and only with bounds.
    Sensitive,
    /// Free to use.
    Public,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identifier => "identifier",
            Self::Quasi => "quasi",
            Self::Sensitive => "sensitive",
            Self::Public => "public",
        }
    }
}

/// Sharing attribute (共享属性, seed 001 art. 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    Unconditional,
    Conditional,
    /// 不予共享: may be registered, never granted.
    None,
}

/// One column's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnPolicy {
    pub role: Role,
    /// `[lo, hi]`: values are clamped into it before any sum; required for summed columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<[f64; 2]>,
    /// A public key set: the group keys anyone may know exist (e.g. the 11 cities). Read it
    /// through [`ColumnPolicy::key_set`], which also covers `key_range`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    /// `[lo, hi]`, integer columns only: a public key set of every integer from `lo` to `hi`
    /// (both included), for year-like columns whose keys are a run of numbers. Not together
    /// with `keys`; at most [`KEY_SET_ENTRIES_MAX`] entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_range: Option<[i64; 2]>,
    /// The p % rule on released sums of this column, `p` in percent (`0 < p ≤ 100`): a sum
    /// cell is protected (NULL) when its second-largest contributor could estimate the
    /// largest within `p` %. Magnitude columns only (bounds with `lo ≥ 0`); see
    /// `crate::disclosure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_percent: Option<f64>,
    /// The (n, k) dominance rule on released sums of this column, `[n, k]`: a sum cell is
    /// protected when its `n` largest contributors (1 to 10) make up more than `k` %
    /// (`0 < k < 100`) of it. Magnitude columns only; see `crate::disclosure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dominance: Option<[f64; 2]>,
}

impl ColumnPolicy {
    /// The column's public key set, from `keys` or from `key_range`; `None` when it has none.
    ///
    /// Every reader of a key set goes through here, so a range is a key set like any other.
    /// A range is spelled as the integers it holds, the way an integer column's `keys` are
    /// written. [`Policy::check`] refuses a range that is reversed or longer than
    /// [`KEY_SET_ENTRIES_MAX`]; should an unchecked policy reach this function anyway, a
    /// reversed range is empty and a long one stops at that many entries, so what it allocates
    /// stays bounded whatever the policy says.
    pub fn key_set(&self) -> Option<Cow<'_, [String]>> {
        match (&self.keys, self.key_range) {
            (Some(keys), _) => Some(Cow::Borrowed(keys.as_slice())),
            (None, Some([lo, hi])) => Some(Cow::Owned(
                (lo..=hi)
                    .take(KEY_SET_ENTRIES_MAX)
                    .map(|key| key.to_string())
                    .collect(),
            )),
            (None, None) => None,
        }
    }

    /// True when the column has a public key set (`keys` or `key_range`).
    pub fn has_key_set(&self) -> bool {
        self.keys.is_some() || self.key_range.is_some()
    }
}

/// An optional dataset-wide privacy budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetBudget {
    pub epsilon_per_month: f64,
}

/// A dataset's policy, as the bureau writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub provider: String,
    pub classification_level: u8,
    pub sharing: Sharing,
    pub acquired_on: String,
    pub privacy_unit: String,
    pub unit_kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<DatasetBudget>,
    /// How often the provider delivers a new version (更新频率, 2020 measures art. 8): one of
    /// [`UPDATE_CADENCES`]; the asset card shows it. Metadata only: no rule reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_cadence: Option<String>,
    pub columns: BTreeMap<String, ColumnPolicy>,
}

/// The update cadences a policy may state.
pub const UPDATE_CADENCES: [&str; 6] = [
    "daily",
    "weekly",
    "monthly",
    "quarterly",
    "yearly",
    "irregular",
];

impl Policy {
    /// Parses a policy file's text; syntax errors name the line.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        toml::from_str(text).map_err(|e| PolicyError(vec![format!("policy file: {e}")]))
    }

    pub fn column(&self, name: &str) -> Option<&ColumnPolicy> {
        self.columns.get(name)
    }

    /// Checks the policy against the data's schema. Returns every problem found.
    pub fn check(&self, schema: &Schema) -> Vec<String> {
        let mut problems = Vec::new();
        if self.provider.trim().is_empty() {
            problems.push("`provider` is empty; name the providing department".to_string());
        }
        if let Some(cadence) = &self.update_cadence
            && !UPDATE_CADENCES.contains(&cadence.as_str())
        {
            problems.push(format!(
                "`update_cadence` is `{cadence}`; write one of {}",
                UPDATE_CADENCES.join(", ")
            ));
        }
        if !(1..=4).contains(&self.classification_level) {
            problems.push(format!(
                "`classification_level` is {}; use 1 (public), 2 (internal), 3 (sensitive) or 4 (core)",
                self.classification_level
            ));
        }
        if NaiveDate::parse_from_str(&self.acquired_on, "%Y-%m-%d").is_err() {
            problems.push(format!(
                "`acquired_on` is `{}`; write the acquisition date as YYYY-MM-DD",
                self.acquired_on
            ));
        }
        if self.unit_kind.trim().is_empty() {
            problems
                .push("`unit_kind` is empty; say what a privacy unit is (e.g. \"person\")".into());
        }
        if let Some(budget) = &self.budget
            && !(budget.epsilon_per_month.is_finite() && budget.epsilon_per_month > 0.0)
        {
            problems.push("`budget.epsilon_per_month` must be a positive number".into());
        }
        if schema.fields().len() > DATASET_COLUMNS_MAX {
            problems.push(format!(
                "the file has {} columns; at most {DATASET_COLUMNS_MAX} are supported",
                schema.fields().len()
            ));
        }

        match schema.field_with_name(&self.privacy_unit) {
            Err(_) => problems.push(format!(
                "privacy unit column `{}` is not in the file; set `privacy_unit` to the column naming whom each row is about",
                self.privacy_unit
            )),
            Ok(field) => {
                if !is_unit_type(field.data_type()) {
                    problems.push(format!(
                        "privacy unit column `{}` has type {}; it must be an integer or text column",
                        self.privacy_unit,
                        field.data_type()
                    ));
                }
                match self.columns.get(&self.privacy_unit) {
                    Some(column) if column.role == Role::Identifier => {}
                    Some(column) => problems.push(format!(
                        "privacy unit column `{}` has role `{}`; it identifies a unit, so give it role = \"identifier\"",
                        self.privacy_unit,
                        column.role.as_str()
                    )),
                    None => {}
                }
            }
        }

        for name in self.columns.keys() {
            if schema.field_with_name(name).is_err() {
                problems.push(format!(
                    "column `{name}` is in the policy but not in the file; remove [columns.{name}] or fix its name"
                ));
            }
        }
        for field in schema.fields() {
            let name = field.name();
            let Some(column) = self.columns.get(name) else {
                problems.push(format!(
                    "column `{name}` has no role; add [columns.{name}] with role = \"identifier\", \"quasi\", \"sensitive\" or \"public\""
                ));
                continue;
            };
            let numeric = field.data_type().is_numeric();
            if let Some([lo, hi]) = column.bounds {
                if !numeric {
                    problems.push(format!(
                        "column `{name}` has bounds but type {}; bounds apply to numeric columns only",
                        field.data_type()
                    ));
                } else if !(lo.is_finite() && hi.is_finite()) {
                    problems.push(format!("column `{name}`: bounds must be finite numbers"));
                } else if lo > hi {
                    problems.push(format!(
                        "column `{name}`: bounds [{lo}, {hi}] have lo > hi; write them as [low, high]"
                    ));
                }
            }
            if column.role == Role::Sensitive && numeric && column.bounds.is_none() {
                problems.push(format!(
                    "sensitive numeric column `{name}` has no bounds; add bounds = [low, high] so sums over it have a known sensitivity"
                ));
            }
            if column.role == Role::Identifier && column.has_key_set() {
                problems.push(format!(
                    "identifier column `{name}` has a public key set; identifiers are never group keys, remove `keys` and `key_range`"
                ));
            }
            problems.extend(crate::disclosure::check_column(
                name,
                field.data_type(),
                column,
            ));
            if let Some(range) = column.key_range {
                problems.extend(check_key_range(name, field.data_type(), column, range));
            }
            if let Some(keys) = &column.keys {
                if keys.is_empty() || keys.len() > KEY_SET_ENTRIES_MAX {
                    problems.push(format!(
                        "column `{name}`: a key set needs 1 to {KEY_SET_ENTRIES_MAX} entries"
                    ));
                }
                if !matches!(
                    field.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) && !field.data_type().is_integer()
                {
                    problems.push(format!(
                        "column `{name}` has a key set but type {}; key sets apply to text and integer columns",
                        field.data_type()
                    ));
                } else if field.data_type().is_integer()
                    && keys.iter().any(|k| k.parse::<i64>().is_err())
                {
                    problems.push(format!(
                        "column `{name}` is an integer column; write its keys as integers in quotes"
                    ));
                }
            }
        }
        problems
    }

    /// Checks that a sum over each bounded column, at the table's `rows` rows, stays within
    /// [`SUM_INT_ABS_MAX`] (integer columns) or [`SUM_FLOAT_ABS_MAX`] (the others). Returns
    /// one line per column that breaks it, naming the column and the widest bound that fits.
    pub fn check_sums(&self, schema: &Schema, rows: u64) -> Vec<String> {
        let mut problems = Vec::new();
        for field in schema.fields() {
            let name = field.name();
            let Some([lo, hi]) = self.columns.get(name).and_then(|c| c.bounds) else {
                continue;
            };
            let bound = lo.abs().max(hi.abs());
            let (limit, limit_name) = sum_abs_max(field.data_type().is_integer());
            let total = bound * rows as f64;
            if !(total.is_finite() && total <= limit) {
                problems.push(format!(
                    "column `{name}`: bounds [{}, {}] let a sum over the table's {rows} rows reach {}, beyond the {} a sum may reach ({limit_name}); narrow the bounds to within ±{} (a column's real range is usually far smaller)",
                    show_number(lo),
                    show_number(hi),
                    show_number(total),
                    show_number(limit),
                    show_number((limit / rows.max(1) as f64).floor()),
                ));
            }
        }
        problems
    }
}

/// The problems of a column's `key_range = [lo, hi]`, each saying what to write instead.
fn check_key_range(
    name: &str,
    data_type: &DataType,
    column: &ColumnPolicy,
    [lo, hi]: [i64; 2],
) -> Vec<String> {
    let mut problems = Vec::new();
    if column.keys.is_some() {
        problems.push(format!(
            "column `{name}` has both `keys` and `key_range`; keep one: `key_range = [low, high]` for a run of integers, `keys` for any other set"
        ));
    }
    if !data_type.is_integer() {
        problems.push(format!(
            "column `{name}` has a key range but type {data_type}; key ranges apply to integer columns only, list text keys with `keys = [...]`"
        ));
    }
    // Counted in i128: `hi - lo + 1` overflows i64 for ranges near its ends.
    let entries = i128::from(hi) - i128::from(lo) + 1;
    if lo > hi {
        problems.push(format!(
            "column `{name}`: key_range [{lo}, {hi}] has low > high; write it as [low, high], e.g. [{hi}, {lo}]"
        ));
    } else if entries > KEY_SET_ENTRIES_MAX as i128 {
        problems.push(format!(
            "column `{name}`: key_range [{lo}, {hi}] holds {entries} keys; a key set may hold at most {KEY_SET_ENTRIES_MAX}, so narrow it to at most that many integers"
        ));
    }
    if let Some((min, max)) = integer_range(data_type)
        && (i128::from(lo) < min || i128::from(hi) > max)
    {
        problems.push(format!(
            "column `{name}`: key_range [{lo}, {hi}] reaches beyond what its type {data_type} holds ({min} to {max}); keep both ends within that"
        ));
    }
    problems
}

/// The smallest and largest value of an integer type; `None` for any other type.
fn integer_range(data_type: &DataType) -> Option<(i128, i128)> {
    Some(match data_type {
        DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
        DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::Int32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::Int64 => (i64::MIN.into(), i64::MAX.into()),
        DataType::UInt8 => (0, u8::MAX.into()),
        DataType::UInt16 => (0, u16::MAX.into()),
        DataType::UInt32 => (0, u32::MAX.into()),
        DataType::UInt64 => (0, u64::MAX.into()),
        _ => return None,
    })
}

fn is_unit_type(data_type: &DataType) -> bool {
    data_type.is_integer()
        || matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
}

/// A policy that cannot be used: one line per problem, each naming the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct PolicyError(pub Vec<String>);

/// A registered dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub id: DatasetId,
    pub name: String,
    pub policy: Policy,
    /// Path of the Parquet file relative to the store's data folder, or the `s3://` URL of a
    /// Parquet object on the domain's object storage (see `sandbox::object_storage`).
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub content_blake3: String,
    pub registered_at: String,
}
