//! The release gate: the only door out of the domain (DESIGN.md, "The release gate").
//!
//! ```text
//! LogicalPlan ─► analysis + allow (steps 1–2: statement policy, expression allow-list, shape)
//!                 ─► Analysis | Refusal
//! Analysis ───► plan_noise: the ε plan (every draw, its sensitivity, share and scale; the
//!               existence threshold τ), checked by OpenDP — still before any row is read
//!   ── the budget is reserved here (jobs) ──
//!           ───► bounding (step 3: each scan partition folded per unit here, then merged)
//!           ───► select: k-anonymity on noisy counts, existence threshold (step 4)
//!           ───► measure: noise (step 5, OpenDP)
//!           ───► assemble: one RecordBatch, the product's rows (possibly none)
//! ```
//!
//! Budget (step 6) is reserved by `jobs` between [`plan_noise`] and `release`, and reasons
//! (step 7) are the [`crate::rules::Refusal`] every static step returns. After the reservation
//! nothing the operator sees depends on the data except through noisy quantities: the groups
//! released are chosen on noisy counts, "nothing to release" is an empty product, and a
//! failure is one fixed [`ReleaseFailure`] whose category goes to the bureau only.
//! **No function outside this module turns in-domain rows into something that leaves**: the
//! sandbox hands partitioned rows to `release`'s fold only, and `release` returns nothing
//! but noisy aggregates of the groups its noisy selection kept.

use std::sync::Arc;

use std::collections::HashMap;

use crate::sandbox::{ExecStats, FoldError, Sandbox, SandboxError};
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{Field, Schema};
use veil_sdk::manifest::{ColumnDescription, NoiseScale};

use crate::analysis::{Analysis, MeasureKind, OutputColumn};
use crate::bounding::{Bounded, Fold, GroupKeyBytes, Limits, Total};
use crate::noise::{Draw, Threshold};
use crate::rules::{Refusal, Rule};
use crate::{bounding, noise};

/// Privacy parameters of one run, as the bureau pinned them. Made from an approval's terms by
/// [`crate::job::release_config`]; read only by the kernel.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseConfig {
    pub(crate) epsilon: f64,
    pub(crate) delta: f64,
    pub(crate) k: u32,
    pub(crate) limits: Limits,
    /// Roughly how many distinct units the input holds (0 when unknown), so the fold can size
    /// its per-unit map once instead of growing it; never affects what is released.
    pub(crate) units_hint: usize,
    /// Where noise comes from: OpenDP (test builds may seed it, see `noise::Source`).
    pub(crate) noise: noise::Source,
}

/// What one measure's draws are, in the ε plan.
#[derive(Debug, Clone, PartialEq)]
enum MeasureDraws {
    /// COUNT(DISTINCT unit): the noisy distinct-unit count every release draws anyway.
    Units,
    /// COUNT(*) or COUNT(expr), or SUM: one draw.
    One(Draw),
    /// AVG: a noisy sum and a noisy count.
    Average { sum: Draw, count: Draw },
}

/// The ε plan of one release: every noisy draw it will make, fixed from the query and the
/// approval alone (see `noise`, "The ε plan"). Only [`plan_noise`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct NoisePlan {
    /// The distinct-unit count of every candidate group: k-anonymity and the existence
    /// threshold are decided on it.
    units: Draw,
    measures: Vec<MeasureDraws>,
    /// τ: a group is shown only if its noisy distinct-unit count reaches it (see `noise`).
    threshold: Threshold,
    /// Whether every group key has a public key set (then every key is a row, and a key
    /// below τ is marked rather than left out).
    public: bool,
}

impl NoisePlan {
    /// The draws, as the manifest lists them.
    pub fn scales(&self) -> Vec<NoiseScale> {
        let mut draws = vec![&self.units];
        for measure in &self.measures {
            match measure {
                MeasureDraws::Units => {}
                MeasureDraws::One(draw) => draws.push(draw),
                MeasureDraws::Average { sum, count } => draws.extend([sum, count]),
            }
        }
        draws
            .into_iter()
            .map(|d| NoiseScale {
                column: d.label.clone(),
                epsilon: d.epsilon,
                sensitivity: d.sensitivity,
                scale: d.scale,
            })
            .collect()
    }

    /// The threshold τ on the noisy distinct-unit count.
    pub fn threshold(&self) -> i64 {
        self.threshold.tau
    }
}

/// Eighths of a job's memory limit the bounding state may be proven to stay within. The rest
/// is for the query's own operators (scans and filters stream; their buffers are small) and
/// for the state's first sizing (a quarter of the limit at most, see `units_capacity`).
const STATE_MEMORY_SHARE_EIGHTHS: u128 = 5;

/// Refuses, before any ε is reserved, a job whose bounding state could outgrow its memory
/// limit on the tables it reads (`rows`: each table's registered row count). The bound holds
/// whatever the rows hold (see `bounding::state_bytes_max`), so a job that passes is never
/// stopped for memory by its state half-way, after ε was spent — an outcome that would then
/// depend on how many persons are in the data. The message names only the limit and the bound,
/// which follow from the registered row counts, never from a value.
pub fn check_memory(
    analysis: &Analysis,
    config: &ReleaseConfig,
    rows: &[u64],
    memory_bytes: usize,
    partitions: usize,
) -> Result<(), Refusal> {
    const MIB: u128 = 1024 * 1024;
    let bound = bounding::state_bytes_max(analysis, config.limits, rows, partitions.max(1));
    let limit = memory_bytes as u128;
    if bound * 8 <= limit * STATE_MEMORY_SHARE_EIGHTHS {
        return Ok(());
    }
    let needed_mib = (bound * 8).div_ceil(STATE_MEMORY_SHARE_EIGHTHS * MIB);
    let largest_mib = crate::sandbox::JOB_MEMORY_BYTES_MAX as u128 / MIB;
    let what_to_do = if needed_mib <= largest_mib {
        format!(
            "Approve the template with a memory limit of at least {needed_mib} MiB \
             (`--memory-mib {needed_mib}`), or run it on a smaller table."
        )
    } else {
        format!(
            "That is more than the largest limit a template can have ({largest_mib} MiB), so \
             no approval lets it run on these tables: register the data in smaller parts \
             (for example one dataset per year) and run the job on each."
        )
    };
    Err(Refusal::one(
        Rule::ResourcesLimit,
        format!(
            "on the tables it reads, this job's per-person bounding state could need up to {} \
             MiB, and the template's memory limit of {} MiB leaves it {} MiB (5/8 of the \
             limit; the query's own operators use the rest); it would need a limit of \
             {needed_mib} MiB. {what_to_do}",
            bound.div_ceil(MIB),
            limit / MIB,
            limit * STATE_MEMORY_SHARE_EIGHTHS / 8 / MIB,
        ),
    ))
}

/// Fixes the ε plan of a release (see `noise`, "The ε plan") and has OpenDP check every
/// measurement in it. Runs before the budget is reserved; a plan OpenDP refuses is a refusal
/// that costs nothing.
pub fn plan_noise(analysis: &Analysis, config: &ReleaseConfig) -> Result<NoisePlan, Refusal> {
    let refuse = |e: noise::NoiseError| {
        Refusal::one(
            Rule::PrivacyParameters,
            format!("the approved privacy parameters cannot be applied to this query: {e}"),
        )
    };
    let max_groups = f64::from(config.limits.max_groups);
    let max_rows = f64::from(config.limits.max_rows);
    let draws = 1 + analysis
        .measures
        .iter()
        .map(|m| match m.kind {
            MeasureKind::CountUnits => 0,
            MeasureKind::CountRows { .. } | MeasureKind::Sum { .. } => 1,
            MeasureKind::Avg { .. } => 2,
        })
        .sum::<usize>();
    let share = config.epsilon / draws as f64;
    if !(share.is_finite() && share > 0.0) {
        return Err(Refusal::one(
            Rule::PrivacyParameters,
            "the approved ε must be a positive number",
        ));
    }
    let units = Draw::new("distinct units", max_groups, share, true).map_err(refuse)?;
    let mut measures = Vec::with_capacity(analysis.measures.len());
    for measure in &analysis.measures {
        let rows = max_groups * max_rows;
        measures.push(match &measure.kind {
            MeasureKind::CountUnits => MeasureDraws::Units,
            MeasureKind::CountRows { .. } => MeasureDraws::One(
                Draw::new(measure.name.clone(), rows, share, true).map_err(refuse)?,
            ),
            MeasureKind::Sum {
                lo, hi, integer, ..
            } => {
                let sensitivity = rows * lo.abs().max(hi.abs());
                let sensitivity = if *integer {
                    sensitivity.ceil().max(1.0)
                } else {
                    sensitivity
                };
                MeasureDraws::One(
                    Draw::new(
                        format!("{} (sum)", measure.name),
                        sensitivity,
                        share,
                        *integer,
                    )
                    .map_err(refuse)?,
                )
            }
            MeasureKind::Avg {
                lo, hi, integer, ..
            } => {
                let sensitivity = rows * lo.abs().max(hi.abs());
                let sensitivity = if *integer {
                    sensitivity.ceil().max(1.0)
                } else {
                    sensitivity
                };
                MeasureDraws::Average {
                    sum: Draw::new(
                        format!("{} (sum)", measure.name),
                        sensitivity,
                        share,
                        *integer,
                    )
                    .map_err(refuse)?,
                    count: Draw::new(format!("{} (count)", measure.name), rows, share, true)
                        .map_err(refuse)?,
                }
            }
        });
    }
    let threshold = Threshold::plan(&units, config.k, config.limits.max_groups, config.delta)
        .map_err(refuse)?;
    Ok(NoisePlan {
        units,
        measures,
        threshold,
        public: analysis.keys_are_public(),
    })
}

/// What the gate lets out.
#[derive(Debug, Clone)]
pub struct Released {
    /// The product's rows: possibly none (a signed, empty product), never a refusal.
    pub(crate) batch: RecordBatch,
    pub(crate) columns: Vec<ColumnDescription>,
    pub(crate) noise_scales: Vec<NoiseScale>,
    pub(crate) groups_released: u64,
    /// With public key sets, how many keys were marked (their noisy distinct-unit count was
    /// below τ, so their measures are NULL). `None` otherwise: counting the groups that did not
    /// clear the threshold would count groups that exist.
    pub(crate) groups_suppressed: Option<u64>,
    /// τ, the threshold on the noisy distinct-unit count.
    pub(crate) threshold: f64,
    pub(crate) stats: ExecStats,
}

/// A `Released` body is read-only outside the kernel: the domain writes and signs exactly
/// what the gate let out.
impl Released {
    /// The product's rows: noisy aggregates of the groups the noisy selection kept (possibly
    /// none). These rows are outside the domain already; they are what a buyer downloads.
    pub fn rows(&self) -> &RecordBatch {
        &self.batch
    }

    /// Each output column's description, for the manifest.
    pub fn columns(&self) -> &[ColumnDescription] {
        &self.columns
    }

    /// Each noisy column's mechanism and scale, for the manifest.
    pub fn noise_scales(&self) -> &[NoiseScale] {
        &self.noise_scales
    }

    /// How many groups the product holds.
    pub fn groups_released(&self) -> u64 {
        self.groups_released
    }

    /// With public key sets, how many keys were marked below τ; `None` otherwise.
    pub fn groups_suppressed(&self) -> Option<u64> {
        self.groups_suppressed
    }

    /// τ, the threshold on the noisy distinct-unit count.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// What the job's execution cost (for the meter; the domain charges registered sizes).
    pub fn stats(&self) -> ExecStats {
        self.stats
    }

    /// Test builds only: a body around any rows, so a product writer's own tests can sign
    /// something. No shipped binary enables the `test-util` feature.
    #[cfg(feature = "test-util")]
    pub fn for_tests(batch: RecordBatch, columns: Vec<ColumnDescription>) -> Self {
        Self {
            groups_released: batch.num_rows() as u64,
            batch,
            columns,
            noise_scales: Vec::new(),
            groups_suppressed: None,
            threshold: 0.0,
            stats: ExecStats::default(),
        }
    }
}

/// Why a release did not finish after the query started. The category is for the bureau's
/// records (it never carries a data value); an operator only ever sees [`FAILED_MESSAGE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseFailure {
    #[error("the sandbox stopped the query: {0}")]
    Sandbox(SandboxError),
    #[error("the release gate failed while {0}")]
    Internal(&'static str),
}

/// The one message an operator sees for any failure after ε was reserved, whatever the data.
pub const FAILED_MESSAGE: &str = "the job failed while it ran; its ε stays spent and nothing was released. The bureau has the job's record; a failure here is a platform fault, not a rule you broke";

/// The groups a release shows, chosen on noisy counts (step 4).
struct Selection {
    /// Their keys, sorted.
    keys: Vec<GroupKeyBytes>,
    /// Their noisy distinct-unit counts.
    units: Vec<i64>,
    /// Public key sets only: keys whose noisy count is below τ (their measures are NULL).
    marked: Vec<bool>,
    public: bool,
}

/// Runs the bounded plan, selects groups on noisy counts, adds noise and returns the product's
/// rows. The run's ε must already be reserved, and `plan` must be this analysis's.
pub(crate) async fn release(
    _reserved: crate::budget::Reserved,
    sandbox: &Sandbox,
    analysis: &Analysis,
    config: ReleaseConfig,
    plan: &NoisePlan,
) -> Result<Released, (ReleaseFailure, ExecStats)> {
    let (bounded, stats) = bound(sandbox, analysis, config).await?;
    let fail = |what: &'static str| (ReleaseFailure::Internal(what), stats);
    let selection = select(analysis, plan, config.noise, &bounded)
        .map_err(|_| fail("drawing the noisy distinct-unit counts"))?;
    let columns = measure(analysis, plan, config.noise, &bounded, &selection)
        .map_err(|_| fail("drawing the noisy aggregates"))?;
    assemble(analysis, plan, &bounded, selection, columns, stats).map_err(fail)
}

/// Step 3: every partition folds its rows into bounded slots per unit; `finish` merges the
/// slots of units that several partitions saw. One group hasher for all folds makes their
/// min-k choices agree, which is what makes that merge exact.
async fn bound(
    sandbox: &Sandbox,
    analysis: &Analysis,
    config: ReleaseConfig,
) -> Result<(Bounded, ExecStats), (ReleaseFailure, ExecStats)> {
    let internal = |what: &'static str| (ReleaseFailure::Internal(what), ExecStats::default());
    let plan =
        bounding::stage_plan(analysis).map_err(|_| internal("planning the bounded query"))?;
    let unit_type = bounding::unit_type(&plan);
    let key_types = bounding::key_types(&plan, analysis.groups.len());
    let partitions = sandbox.partitions();
    let hasher = bounding::GroupHasher::for_source(config.noise);
    let units_capacity = bounding::units_capacity(
        analysis,
        config.units_hint / partitions,
        sandbox.limits().memory_bytes / 4 / partitions,
    );
    let init = {
        let analysis = analysis.clone();
        let key_types = key_types.clone();
        let limits = config.limits;
        move |reservation| {
            Fold::new(
                &analysis,
                &unit_type,
                &key_types,
                limits,
                hasher.clone(),
                reservation,
                units_capacity,
            )
        }
    };
    let fold = |state: &mut Result<Fold, FoldError>, batch: &RecordBatch| match state {
        Ok(fold) => fold.add_batch(batch),
        Err(error) => Err(error.clone()),
    };
    let (folds, stats) = sandbox
        .execute_folded(plan, init, fold)
        .await
        .map_err(|e| (ReleaseFailure::Sandbox(e), ExecStats::default()))?;
    let fail = |what: &'static str| (ReleaseFailure::Internal(what), stats);
    let folds: Vec<Fold> = folds
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|_| fail("starting the bounding fold"))?;
    let bounded = bounding::finish(folds, key_types).map_err(fail)?;
    Ok((bounded, stats))
}

/// Step 4: which groups the product shows, decided on noisy distinct-unit counts only.
fn select(
    analysis: &Analysis,
    plan: &NoisePlan,
    source: noise::Source,
    bounded: &Bounded,
) -> Result<Selection, noise::NoiseError> {
    let true_units = |key: &GroupKeyBytes| bounded.groups.get(key).map_or(0, |g| g.units);
    let tau = plan.threshold.tau;
    match plan.public {
        true => {
            // Public key sets: every key is a row, whatever the data.
            let key_sets: Vec<Vec<String>> = analysis
                .groups
                .iter()
                .map(|g| g.keys.clone().unwrap_or_default())
                .collect();
            let mut keys =
                bounding::encode_public_keys(&bounded.converter, &bounded.key_types, &key_sets)
                    .map_err(|e| noise::NoiseError::OpenDp(e.to_string()))?;
            keys.sort();
            keys.dedup();
            let counts: Vec<i64> = keys.iter().map(true_units).collect();
            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
            let units = plan.units.integers(source, &refs, counts)?;
            // Marking is post-processing of the noisy count: free, and it depends on no true
            // count.
            let marked = units.iter().map(|u| *u < tau).collect();
            Ok(Selection {
                keys,
                units,
                marked,
                public: true,
            })
        }
        false => {
            // Private keys: OpenDP's threshold measurement decides which groups exist.
            let counts: HashMap<String, i64> = bounded
                .groups
                .iter()
                .map(|(key, totals)| (hex::encode(key), totals.units))
                .collect();
            let released = plan.threshold.release(source, &plan.units, counts)?;
            let mut kept: Vec<(GroupKeyBytes, i64)> = released
                .into_iter()
                .filter_map(|(key, units)| {
                    hex::decode(key)
                        .ok()
                        .map(|k| (GroupKeyBytes::from(k), units))
                })
                .collect();
            kept.sort();
            let (keys, units): (Vec<_>, Vec<_>) = kept.into_iter().unzip();
            let marked = vec![false; keys.len()];
            Ok(Selection {
                keys,
                units,
                marked,
                public: false,
            })
        }
    }
}

/// One measure's noisy values, one per selected group.
enum Column {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// Step 5: the noisy value of every measure for every selected group.
fn measure(
    analysis: &Analysis,
    plan: &NoisePlan,
    source: noise::Source,
    bounded: &Bounded,
    selection: &Selection,
) -> Result<Vec<Column>, noise::NoiseError> {
    let keys: Vec<&[u8]> = selection.keys.iter().map(|k| k.as_ref()).collect();
    let totals_of = |j: usize| -> Vec<Total> {
        selection
            .keys
            .iter()
            .map(|key| {
                bounded
                    .groups
                    .get(key)
                    .map_or(Total::Count(0), |g| g.totals[j])
            })
            .collect()
    };
    let mut columns = Vec::with_capacity(analysis.measures.len());
    for (j, (measure, draws)) in analysis.measures.iter().zip(&plan.measures).enumerate() {
        let totals = totals_of(j);
        let column = match (&measure.kind, draws) {
            (MeasureKind::CountUnits, _) => {
                Column::Int(selection.units.iter().map(|v| (*v).max(0)).collect())
            }
            (MeasureKind::CountRows { .. }, MeasureDraws::One(draw)) => Column::Int(
                draw.integers(source, &keys, totals.iter().map(count_of).collect())?
                    .into_iter()
                    .map(|v| v.max(0))
                    .collect(),
            ),
            (MeasureKind::Sum { integer, .. }, MeasureDraws::One(draw)) => {
                if *integer {
                    Column::Int(draw.integers(
                        source,
                        &keys,
                        totals.iter().map(int_sum_of).collect(),
                    )?)
                } else {
                    let sums =
                        draw.floats(source, &keys, totals.iter().map(float_sum_of).collect())?;
                    Column::Float(sums.into_iter().map(round_cents).collect())
                }
            }
            (
                MeasureKind::Avg {
                    lo, hi, integer, ..
                },
                MeasureDraws::Average { sum, count },
            ) => {
                let sums: Vec<f64> = if *integer {
                    sum.integers(source, &keys, totals.iter().map(int_sum_of).collect())?
                        .into_iter()
                        .map(|v| v as f64)
                        .collect()
                } else {
                    sum.floats(source, &keys, totals.iter().map(float_sum_of).collect())?
                };
                let counts =
                    count.integers(source, &keys, totals.iter().map(count_of).collect())?;
                Column::Float(
                    sums.iter()
                        .zip(counts)
                        .map(|(s, c)| round_cents((s / c.max(1) as f64).clamp(*lo, *hi)))
                        .collect(),
                )
            }
            _ => {
                return Err(noise::NoiseError::OpenDp(
                    "a measure without its draw".into(),
                ));
            }
        };
        columns.push(column);
    }
    Ok(columns)
}

/// Assembles the product in the operator's column order. Marked cells (public keys whose
/// noisy count was below k) keep their key and get NULL measures.
fn assemble(
    analysis: &Analysis,
    plan: &NoisePlan,
    bounded: &Bounded,
    selection: Selection,
    columns: Vec<Column>,
    stats: ExecStats,
) -> Result<Released, &'static str> {
    let keys: Vec<&GroupKeyBytes> = selection.keys.iter().collect();
    let key_columns = bounding::decode_keys(&bounded.converter, analysis.groups.len(), &keys)?;
    let valid = |i: usize| !selection.marked[i];
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let mut descriptions = Vec::new();
    let mut columns: Vec<Option<Column>> = columns.into_iter().map(Some).collect();
    for output in &analysis.output {
        match *output {
            OutputColumn::Group(i) => {
                let array = key_columns.get(i).cloned().ok_or("placing a group key")?;
                fields.push(Field::new(
                    &analysis.groups[i].name,
                    array.data_type().clone(),
                    true,
                ));
                arrays.push(array);
                descriptions.push(ColumnDescription {
                    name: analysis.groups[i].name.clone(),
                    kind: "group key".into(),
                });
            }
            OutputColumn::Measure(j) => {
                let measure = &analysis.measures[j];
                let column = columns
                    .get_mut(j)
                    .and_then(Option::take)
                    .ok_or("placing an aggregate")?;
                let array: ArrayRef = match column {
                    Column::Int(values) => Arc::new(Int64Array::from_iter(
                        values
                            .into_iter()
                            .enumerate()
                            .map(|(i, v)| valid(i).then_some(v)),
                    )),
                    Column::Float(values) => Arc::new(Float64Array::from_iter(
                        values
                            .into_iter()
                            .enumerate()
                            .map(|(i, v)| valid(i).then_some(v)),
                    )),
                };
                fields.push(Field::new(&measure.name, array.data_type().clone(), true));
                arrays.push(array);
                let kind = match measure.kind {
                    MeasureKind::CountUnits => "noisy count of distinct units",
                    MeasureKind::CountRows { .. } => "noisy count of rows",
                    MeasureKind::Sum { .. } => "noisy sum (values clamped to the declared bounds)",
                    MeasureKind::Avg { .. } => {
                        "noisy average (noisy sum / noisy count, clamped to the bounds)"
                    }
                };
                let kind = if selection.public {
                    format!(
                        "{kind}; NULL where the noisy count of distinct units was below the threshold"
                    )
                } else {
                    kind.to_string()
                };
                descriptions.push(ColumnDescription {
                    name: measure.name.clone(),
                    kind,
                });
            }
        }
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|_| "assembling the product")?;
    let marked = selection.marked.iter().filter(|m| **m).count() as u64;
    Ok(Released {
        groups_released: batch.num_rows() as u64,
        batch,
        columns: descriptions,
        noise_scales: plan.scales(),
        groups_suppressed: selection.public.then_some(marked),
        threshold: plan.threshold() as f64,
        stats,
    })
}

/// Rounds to two decimals: post-processing, so it costs no privacy, and it keeps products from
/// pretending to a precision the noise does not have.
fn round_cents(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn count_of(total: &Total) -> i64 {
    match total {
        Total::Count(n) => *n,
        Total::IntSum { count, .. } | Total::FloatSum { count, .. } => *count,
        Total::Units => 0,
    }
}

fn int_sum_of(total: &Total) -> i64 {
    match total {
        Total::IntSum { sum, .. } => (*sum).clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        _ => 0,
    }
}

fn float_sum_of(total: &Total) -> f64 {
    match total {
        Total::FloatSum { sum, .. } => *sum,
        _ => 0.0,
    }
}
