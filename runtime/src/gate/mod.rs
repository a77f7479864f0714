//! The release gate: the only door out of the domain (DESIGN.md, "The release gate").
//!
//! ```text
//! LogicalPlan ─► analysis (steps 1–2: statement policy, shape)  ─► Analysis | Refusal
//! Analysis ───► bounding (step 3: each scan partition folded per unit here, then merged)
//!           ───► k-anonymity + existence threshold (step 4)
//!           ───► noise (step 5, OpenDP) ─► one RecordBatch: the product's rows
//! ```
//!
//! Budget (step 6) is reserved by `jobs` before [`release`] runs, and reasons (step 7) are the
//! [`rules::Refusal`] every step returns. **No function outside this module turns in-domain
//! rows into something that leaves**: the sandbox hands partitioned rows to [`release`]'s fold only,
//! and [`release`] returns nothing but noisy aggregates of groups that passed k and τ.

pub mod analysis;
pub mod bounding;
pub mod noise;
pub mod rules;

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{Field, Schema};
use veil_sandbox::{ExecStats, FoldError, Sandbox, SandboxError};
use veil_sdk::manifest::{ColumnDescription, NoiseScale};

use analysis::{Analysis, MeasureKind, OutputColumn};
use bounding::{Fold, GroupKeyBytes, Limits, Total};
use rules::{Refusal, Rule};

/// Privacy parameters of one run, as the bureau pinned them.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseConfig {
    pub epsilon: f64,
    pub delta: f64,
    pub k: u32,
    pub limits: Limits,
    /// Roughly how many distinct units the input holds (0 when unknown), so the fold can size
    /// its per-unit map once instead of growing it; never affects what is released.
    pub units_hint: usize,
}

/// What the gate lets out.
#[derive(Debug, Clone)]
pub struct Released {
    pub batch: RecordBatch,
    pub columns: Vec<ColumnDescription>,
    pub noise_scales: Vec<NoiseScale>,
    pub groups_released: u64,
    pub groups_suppressed: u64,
    pub threshold: Option<f64>,
    pub stats: ExecStats,
}

/// Why a release did not happen after the query started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GateError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    Sandbox(SandboxError),
    #[error("the release gate failed while {0}")]
    Internal(String),
}

/// One noisy draw's output per released group.
enum Column {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// Runs the bounded plan, applies k-anonymity, the existence threshold and noise, and returns
/// the product's rows. The run's ε must already be reserved.
pub async fn release(
    sandbox: &Sandbox,
    analysis: &Analysis,
    config: ReleaseConfig,
) -> Result<Released, (GateError, ExecStats)> {
    let internal = |what: &str| (GateError::Internal(what.to_string()), ExecStats::default());
    let plan =
        bounding::stage_plan(analysis).map_err(|_| internal("planning the bounded query"))?;
    let unit_type = bounding::unit_type(&plan);
    let key_types = bounding::key_types(&plan, analysis.groups.len());

    // Step 3: every partition folds its rows into bounded slots per unit; `finish` merges the
    // slots of units that several partitions saw. One group hasher for all folds makes their
    // min-k choices agree, which is what makes that merge exact.
    let partitions = sandbox.partitions();
    let hasher = bounding::GroupHasher::new();
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
        .map_err(|e| (GateError::Sandbox(e), ExecStats::default()))?;
    let fail = |what: &str| (GateError::Internal(what.to_string()), stats);
    let folds: Vec<Fold> = folds
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|_| fail("starting the bounding fold"))?;
    let bounded = bounding::finish(folds, key_types.clone()).map_err(fail)?;

    // Step 4: which groups are candidates, and k-anonymity on true distinct-unit counts.
    let public = analysis.keys_are_public();
    let mut candidates: Vec<GroupKeyBytes> = if public {
        let key_sets: Vec<Vec<String>> = analysis
            .groups
            .iter()
            .map(|g| g.keys.clone().unwrap_or_default())
            .collect();
        bounding::encode_public_keys(&bounded.converter, &key_types, &key_sets).map_err(fail)?
    } else {
        bounded.groups.keys().cloned().collect()
    };
    candidates.sort();
    candidates.dedup();
    let k = i64::from(config.k);
    let mut suppressed: u64 = 0;
    candidates.retain(|key| {
        let units = bounded.groups.get(key).map_or(0, |g| g.units);
        // With public keys a group with no unit at all is still released (with noise), so
        // the set of rows does not depend on the data; a group with 1..k-1 units is not.
        let keep = units >= k || (public && units == 0);
        if !keep {
            suppressed += 1;
        }
        keep
    });

    // Step 5: split ε over the noisy draws.
    let needs_unit_draw = !public
        || analysis
            .measures
            .iter()
            .any(|m| matches!(m.kind, MeasureKind::CountUnits));
    let draws = usize::from(needs_unit_draw)
        + analysis
            .measures
            .iter()
            .map(|m| match m.kind {
                MeasureKind::CountUnits => 0,
                MeasureKind::CountRows { .. } | MeasureKind::Sum { .. } => 1,
                MeasureKind::Avg { .. } => 2,
            })
            .sum::<usize>();
    let share = config.epsilon / draws.max(1) as f64;
    let max_groups = i64::from(config.limits.max_groups);
    let max_rows = i64::from(config.limits.max_rows);
    let noise_failed = |e: noise::NoiseError| (GateError::Internal(e.to_string()), stats);
    let mut scales = Vec::new();

    let mut threshold = None;
    let mut noisy_units: Option<Vec<i64>> = None;
    if needs_unit_draw {
        let true_units: Vec<i64> = candidates
            .iter()
            .map(|key| bounded.groups.get(key).map_or(0, |g| g.units))
            .collect();
        let noisy = noise::laplace_integers(true_units, max_groups, share).map_err(noise_failed)?;
        scales.push(NoiseScale {
            column: "distinct units".into(),
            epsilon: share,
            sensitivity: max_groups as f64,
            scale: noisy.scale,
        });
        let mut values = noisy.values;
        if !public {
            let tau = noise::existence_threshold(
                config.k,
                config.limits.max_groups,
                noisy.scale,
                config.delta,
            );
            threshold = Some(tau);
            let mut kept_keys = Vec::with_capacity(candidates.len());
            let mut kept_values = Vec::with_capacity(values.len());
            for (key, value) in candidates.into_iter().zip(values) {
                if value as f64 >= tau {
                    kept_keys.push(key);
                    kept_values.push(value);
                } else {
                    suppressed += 1;
                }
            }
            candidates = kept_keys;
            values = kept_values;
        }
        noisy_units = Some(values);
    }

    if candidates.is_empty() {
        return Err((
            GateError::Refused(Refusal::one(
                Rule::KAnonymity,
                format!(
                    "no group has at least k = {} distinct units{}; widen the groups or the filter",
                    config.k,
                    if public {
                        ""
                    } else {
                        " and a noisy count above the DP threshold"
                    }
                ),
            )),
            stats,
        ));
    }

    let totals_of = |j: usize| -> Vec<Total> {
        candidates
            .iter()
            .map(|key| {
                bounded
                    .groups
                    .get(key)
                    .map_or(Total::Count(0), |g| g.totals[j])
            })
            .collect()
    };
    let mut measure_columns: Vec<Column> = Vec::with_capacity(analysis.measures.len());
    let mut descriptions: Vec<&'static str> = Vec::new();
    for (j, measure) in analysis.measures.iter().enumerate() {
        match &measure.kind {
            MeasureKind::CountUnits => {
                let values = noisy_units.clone().unwrap_or_default();
                measure_columns.push(Column::Int(values.into_iter().map(|v| v.max(0)).collect()));
                descriptions.push("noisy count of distinct units");
            }
            MeasureKind::CountRows { .. } => {
                let counts: Vec<i64> = totals_of(j).iter().map(count_of).collect();
                let sensitivity = max_groups * max_rows;
                let noisy =
                    noise::laplace_integers(counts, sensitivity, share).map_err(noise_failed)?;
                scales.push(NoiseScale {
                    column: measure.name.clone(),
                    epsilon: share,
                    sensitivity: sensitivity as f64,
                    scale: noisy.scale,
                });
                measure_columns.push(Column::Int(
                    noisy.values.into_iter().map(|v| v.max(0)).collect(),
                ));
                descriptions.push("noisy count of rows");
            }
            MeasureKind::Sum {
                lo, hi, integer, ..
            }
            | MeasureKind::Avg {
                lo, hi, integer, ..
            } => {
                let bound = lo.abs().max(hi.abs());
                let sum_sensitivity = max_groups as f64 * max_rows as f64 * bound;
                let totals = totals_of(j);
                let noisy_sum: Vec<f64> = if *integer {
                    let sums: Vec<i64> = totals
                        .iter()
                        .map(|t| match t {
                            Total::IntSum { sum, .. } => {
                                (*sum).clamp(i64::MIN as i128, i64::MAX as i128) as i64
                            }
                            _ => 0,
                        })
                        .collect();
                    let sensitivity = sum_sensitivity.ceil() as i64;
                    let noisy = noise::laplace_integers(sums, sensitivity.max(1), share)
                        .map_err(noise_failed)?;
                    scales.push(NoiseScale {
                        column: format!("{} (sum)", measure.name),
                        epsilon: share,
                        sensitivity: sensitivity.max(1) as f64,
                        scale: noisy.scale,
                    });
                    noisy.values.into_iter().map(|v| v as f64).collect()
                } else {
                    let sums: Vec<f64> = totals
                        .iter()
                        .map(|t| match t {
                            Total::FloatSum { sum, .. } => *sum,
                            _ => 0.0,
                        })
                        .collect();
                    let noisy =
                        noise::laplace_floats(sums, sum_sensitivity.max(f64::MIN_POSITIVE), share)
                            .map_err(noise_failed)?;
                    scales.push(NoiseScale {
                        column: format!("{} (sum)", measure.name),
                        epsilon: share,
                        sensitivity: sum_sensitivity,
                        scale: noisy.scale,
                    });
                    noisy.values
                };
                if matches!(measure.kind, MeasureKind::Sum { .. }) {
                    if *integer {
                        measure_columns
                            .push(Column::Int(noisy_sum.iter().map(|v| *v as i64).collect()));
                    } else {
                        measure_columns.push(Column::Float(
                            noisy_sum.into_iter().map(round_cents).collect(),
                        ));
                    }
                    descriptions.push("noisy sum (values clamped to the declared bounds)");
                    continue;
                }
                let counts: Vec<i64> = totals.iter().map(count_of).collect();
                let sensitivity = max_groups * max_rows;
                let noisy_count =
                    noise::laplace_integers(counts, sensitivity, share).map_err(noise_failed)?;
                scales.push(NoiseScale {
                    column: format!("{} (count)", measure.name),
                    epsilon: share,
                    sensitivity: sensitivity as f64,
                    scale: noisy_count.scale,
                });
                let averages = noisy_sum
                    .iter()
                    .zip(noisy_count.values)
                    .map(|(sum, count)| round_cents((sum / count.max(1) as f64).clamp(*lo, *hi)))
                    .collect();
                measure_columns.push(Column::Float(averages));
                descriptions.push("noisy average (noisy sum / noisy count, clamped to the bounds)");
            }
        }
    }

    // Assemble the product in the operator's column order.
    let keys: Vec<&GroupKeyBytes> = candidates.iter().collect();
    let key_columns =
        bounding::decode_keys(&bounded.converter, analysis.groups.len(), &keys).map_err(fail)?;
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let mut columns = Vec::new();
    let mut measure_columns: Vec<Option<Column>> = measure_columns.into_iter().map(Some).collect();
    for output in &analysis.output {
        match *output {
            OutputColumn::Group(i) => {
                let array = key_columns
                    .get(i)
                    .cloned()
                    .ok_or_else(|| fail("placing a group key"))?;
                fields.push(Field::new(
                    &analysis.groups[i].name,
                    array.data_type().clone(),
                    true,
                ));
                arrays.push(array);
                columns.push(ColumnDescription {
                    name: analysis.groups[i].name.clone(),
                    kind: "group key".into(),
                });
            }
            OutputColumn::Measure(j) => {
                let name = &analysis.measures[j].name;
                let column = measure_columns
                    .get_mut(j)
                    .and_then(Option::take)
                    .ok_or_else(|| fail("placing an aggregate"))?;
                let array: ArrayRef = match column {
                    Column::Int(values) => Arc::new(Int64Array::from(values)),
                    Column::Float(values) => Arc::new(Float64Array::from(values)),
                };
                fields.push(Field::new(name, array.data_type().clone(), false));
                arrays.push(array);
                columns.push(ColumnDescription {
                    name: name.clone(),
                    kind: descriptions[j].into(),
                });
            }
        }
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|_| fail("assembling the product"))?;
    Ok(Released {
        groups_released: batch.num_rows() as u64,
        batch,
        columns,
        noise_scales: scales,
        groups_suppressed: suppressed,
        threshold,
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
