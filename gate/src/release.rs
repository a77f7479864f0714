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
use serde::{Deserialize, Serialize};
use veil_sdk::manifest::{
    Accounting, ColumnAccuracy, ColumnDescription, ContributionsDropped, DisclosureReport,
    NoiseScale,
};

use crate::accuracy::{self, ALPHA};
use crate::analysis::{Analysis, MeasureKind, OutputColumn};
use crate::bounding::{Bounded, Fold, GroupKeyBytes, Limits, Total};
use crate::disclosure::{self, DisclosurePlan};
use crate::noise::{Draw, Mechanism, Threshold};
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
    /// Laplace or Gaussian noise, as approved.
    pub(crate) mechanism: Mechanism,
}

/// What one measure's draws are, in the ε plan.
#[derive(Debug, Clone, PartialEq)]
enum MeasureDraws {
    /// COUNT(DISTINCT unit): the noisy distinct-unit count every release draws anyway.
    Units,
    /// COUNT(*) or COUNT(expr), or SUM: one draw.
    One(Draw),
    /// AVG: a noisy sum and a noisy count; `count` is `None` when the average divides by the
    /// distinct-unit draw (see `MeasureKind::Avg::nullable`).
    Average { sum: Draw, count: Option<Draw> },
}

/// The share of a run's ε (or ρ) spent on counting the units whose contributions the bounds
/// cut: small, since the figure only has to say whether truncation is rare or common.
pub const TRUNCATED_SHARE: f64 = 0.05;

/// Headroom kept when a run's ε (or ρ) is split, so that the shares' floating-point sum never
/// exceeds it.
const SPLIT_HEADROOM: f64 = 1e-12;

/// Suffixes of a measure's interval columns in the product.
pub const CI_LOW_SUFFIX: &str = "_ci_low";
pub const CI_HIGH_SUFFIX: &str = "_ci_high";

/// The ε plan of one release: every noisy draw it will make, fixed from the query and the
/// approval alone (see `noise`, "The ε plan"). Only [`plan_noise`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct NoisePlan {
    /// The distinct-unit count of every candidate group: k-anonymity and the existence
    /// threshold are decided on it.
    units: Draw,
    measures: Vec<MeasureDraws>,
    /// The count of units whose contributions the bounds cut (one number for the release).
    truncated: Draw,
    /// Per measure: the margin draw of its disclosure rules, for a SUM or AVG over a column
    /// that has some (see `disclosure`).
    disclosure: Vec<Option<DisclosurePlan>>,
    /// τ: a group is shown only if its noisy distinct-unit count reaches it (see `noise`).
    threshold: Threshold,
    /// Whether every group key has a public key set (then every key is a row, and a key
    /// below τ is marked rather than left out).
    public: bool,
    /// Gaussian plans: how their ρ meets the approved (ε, δ).
    accounting: Option<Accounting>,
    /// What each output column is stated to be accurate to, before any row is read.
    accuracy: Vec<ColumnAccuracy>,
}

impl NoisePlan {
    /// The draws, as the manifest lists them.
    pub fn scales(&self) -> Vec<NoiseScale> {
        let mut draws = vec![&self.units];
        for measure in &self.measures {
            match measure {
                MeasureDraws::Units => {}
                MeasureDraws::One(draw) => draws.push(draw),
                MeasureDraws::Average { sum, count } => {
                    draws.push(sum);
                    draws.extend(count);
                }
            }
        }
        draws.extend(self.disclosure.iter().flatten().map(|d| &d.draw));
        draws.push(&self.truncated);
        draws
            .into_iter()
            .map(|d| NoiseScale {
                column: d.label.clone(),
                epsilon: d.epsilon,
                sensitivity: d.sensitivity,
                scale: d.scale,
                mechanism: Some(d.mechanism_name().to_string()),
                rho: (d.mechanism == Mechanism::Gaussian).then_some(d.rho),
                alpha: Some(ALPHA),
                half_width: d.half_width(ALPHA).ok(),
            })
            .collect()
    }

    /// The threshold τ on the noisy distinct-unit count.
    pub fn threshold(&self) -> i64 {
        self.threshold.tau
    }

    /// Each output measure's stated accuracy at 95 %, with a warning where it is poor.
    pub fn accuracy(&self) -> &[ColumnAccuracy] {
        &self.accuracy
    }

    /// Gaussian plans: their ρ and how it converts to the approved (ε, δ).
    pub fn accounting(&self) -> Option<&Accounting> {
        self.accounting.as_ref()
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

/// One draw of the plan before its share is known: what it measures, its sensitivity, and
/// how much its error weighs: the share of each output column's stated error it accounts
/// for, summed over the columns it serves (see [`plan_noise`], "The split").
struct Wanted {
    label: String,
    sensitivity: f64,
    integer: bool,
    weight: f64,
}

/// Where a measure's draws sit in the list of [`Wanted`] draws.
enum Slots {
    Units,
    One(usize),
    Average { sum: usize, count: Option<usize> },
}

/// Splits `total` (ε for Laplace, ρ for Gaussian) between draws of `weights` so that the sum
/// of their weighted errors is smallest: a Laplace draw's error grows as `1/ε_i`, so
/// minimising `Σ w_i/ε_i` under `Σ ε_i = ε` gives `ε_i ∝ √w_i`; a Gaussian draw's as
/// `1/√ρ_i`, which gives `ρ_i ∝ w_i^(2/3)`. The split depends on the query and the approval
/// only.
fn split(weights: &[f64], total: f64, mechanism: Mechanism) -> Vec<f64> {
    let power = match mechanism {
        Mechanism::Laplace => 0.5,
        Mechanism::Gaussian => 2.0 / 3.0,
    };
    let raw: Vec<f64> = weights
        .iter()
        .map(|w| w.max(f64::MIN_POSITIVE).powf(power))
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter()
        .map(|r| total * (1.0 - SPLIT_HEADROOM) * r / sum)
        .collect()
}

/// Fixes the ε plan of a release (see `noise`, "The ε plan") and has OpenDP check every
/// measurement in it. Runs before the budget is reserved; a plan OpenDP refuses is a refusal
/// that costs nothing.
///
/// # The split
/// [`TRUNCATED_SHARE`] of the run goes to the count of truncated units; the rest is split
/// between the distinct-unit count and the measures' draws to minimise the sum, over the
/// output columns, of each column's stated error relative to what an even split of the draws
/// would give it — so every column counts alike, whatever its unit, and a column's error
/// under the split is smaller than under the even split wherever the plan can trade. A count
/// or a sum is one draw, which carries its whole error (weight 1), and so are the distinct-unit
/// count (which also decides which groups are shown) and a disclosure margin; an average's
/// error `(a_s + H · a_c) / n` is carried by its sum and its count in proportion to their
/// terms, `Δ_s : H · Δ_c`. An average whose count is the distinct-unit count (at most one row
/// per unit and group, a value that cannot be NULL) draws no count of its own: the
/// distinct-unit draw serves both, and weighs for both.
///
/// # Averages
/// An average sums its values as offsets from the middle `m` of the bounds and releases
/// `m + noisy offset sum / noisy count`. One unit's offset sum in a group is at most
/// `max_rows · H`, `H` half the bounds' width, where a plain sum's is `max_rows · max(|lo|,
/// |hi|)`: for bounds `[0, hi]`, half the noise for the same ε. (The offset sum is the bounded
/// sum minus `m` times the bounded count, both per unit and group as the bounding capped
/// them, so the argument of `bounding` holds for it row by row.)
///
/// # Gaussian
/// Sensitivities are L2: one unit moves at most `max_groups` groups, each by at most its
/// per-group bound, so `√max_groups` times that bound. The run's ρ is the largest that
/// OpenDP's zCDP conversion turns into the approved ε at δ/2 (all of δ with public keys); the
/// existence threshold keeps its own δ within the other half.
pub fn plan_noise(analysis: &Analysis, config: &ReleaseConfig) -> Result<NoisePlan, Refusal> {
    let refuse = |e: noise::NoiseError| {
        Refusal::one(
            Rule::PrivacyParameters,
            format!("the approved privacy parameters cannot be applied to this query: {e}"),
        )
    };
    if !(config.epsilon.is_finite() && config.epsilon > 0.0) {
        return Err(Refusal::one(
            Rule::PrivacyParameters,
            "the approved ε must be a positive number",
        ));
    }
    check_interval_names(analysis)?;
    let mechanism = config.mechanism;
    let public = analysis.keys_are_public();
    let max_groups = f64::from(config.limits.max_groups);
    let max_rows = f64::from(config.limits.max_rows);
    // One unit's reach over the vector of groups: L1 adds its groups, L2 adds their squares.
    let groups_norm = match mechanism {
        Mechanism::Laplace => max_groups,
        Mechanism::Gaussian => max_groups.sqrt(),
    };
    let integer_sensitivity = |s: f64, integer: bool| if integer { s.ceil().max(1.0) } else { s };

    let mut wanted = vec![Wanted {
        label: "distinct units".into(),
        sensitivity: integer_sensitivity(groups_norm, true),
        integer: true,
        weight: 1.0,
    }];
    let units_sensitivity = wanted[0].sensitivity;
    let mut slots = Vec::with_capacity(analysis.measures.len());
    let mut ruled = Vec::with_capacity(analysis.measures.len());
    for measure in &analysis.measures {
        // A ruled SUM or AVG draws its cells' disclosure margins too: a column of its own.
        ruled.push(match (&measure.kind, disclosure::rules_of(&measure.kind)) {
            (MeasureKind::Sum { hi, .. } | MeasureKind::Avg { hi, .. }, Some(rules)) => {
                let sensitivity = disclosure::sensitivity(*hi, config.limits, mechanism);
                wanted.push(Wanted {
                    label: disclosure::label(&measure.name),
                    sensitivity,
                    integer: false,
                    weight: 1.0,
                });
                Some((wanted.len() - 1, *rules))
            }
            _ => None,
        });
        let slot = match &measure.kind {
            MeasureKind::CountUnits => Slots::Units,
            MeasureKind::CountRows { .. } => {
                wanted.push(Wanted {
                    label: measure.name.clone(),
                    sensitivity: integer_sensitivity(groups_norm * max_rows, true),
                    integer: true,
                    weight: 1.0,
                });
                Slots::One(wanted.len() - 1)
            }
            MeasureKind::Sum {
                lo, hi, integer, ..
            } => {
                let magnitude = lo.abs().max(hi.abs());
                wanted.push(Wanted {
                    label: format!("{} (sum)", measure.name),
                    sensitivity: integer_sensitivity(groups_norm * max_rows * magnitude, *integer),
                    integer: *integer,
                    weight: 1.0,
                });
                Slots::One(wanted.len() - 1)
            }
            MeasureKind::Avg {
                lo,
                hi,
                integer,
                nullable,
                ..
            } => {
                let (_, half) = accuracy::midpoint(*lo, *hi, *integer);
                // Offsets can all be 0 (lo = hi); a draw needs a positive sensitivity.
                let sum_sensitivity = integer_sensitivity(
                    (groups_norm * max_rows * half).max(f64::MIN_POSITIVE),
                    *integer,
                );
                let shared = config.limits.max_rows == 1 && !nullable;
                let count_sensitivity = if shared {
                    units_sensitivity
                } else {
                    integer_sensitivity(groups_norm * max_rows, true)
                };
                // The average's error, a_s + H · a_c, carried in proportion to its terms.
                let count_term = half * count_sensitivity;
                let sum_weight = sum_sensitivity / (sum_sensitivity + count_term);
                wanted.push(Wanted {
                    label: format!(
                        "{} (sum of offsets from the bounds' midpoint)",
                        measure.name
                    ),
                    sensitivity: sum_sensitivity,
                    integer: *integer,
                    weight: sum_weight,
                });
                let sum = wanted.len() - 1;
                let count = if shared {
                    wanted[0].weight += 1.0 - sum_weight;
                    None
                } else {
                    wanted.push(Wanted {
                        label: format!("{} (count)", measure.name),
                        sensitivity: count_sensitivity,
                        integer: true,
                        weight: 1.0 - sum_weight,
                    });
                    Some(wanted.len() - 1)
                };
                Slots::Average { sum, count }
            }
        };
        slots.push(slot);
    }

    // The run's total in the mechanism's own unit, and how it meets the approved (ε, δ).
    let (total, threshold_delta, accounting) = match mechanism {
        Mechanism::Laplace => (config.epsilon, config.delta, None),
        Mechanism::Gaussian => {
            let threshold_delta = if public { 0.0 } else { config.delta / 2.0 };
            let conversion_delta = config.delta - threshold_delta;
            let rho = noise::rho_for(config.epsilon, conversion_delta).map_err(refuse)?;
            let epsilon = noise::epsilon_of_rho(rho, conversion_delta).map_err(refuse)?;
            let accounting = Accounting {
                measure: "zCDP".into(),
                rho,
                threshold_delta,
                epsilon,
                delta: config.delta,
                conversion: format!(
                    "OpenDP's ZeroConcentratedDivergence conversion (make_zCDP_to_approxDP): ρ = {rho} gives ε = {epsilon} at δ = {conversion_delta}; the existence threshold adds at most δ = {threshold_delta}"
                ),
            };
            (rho, threshold_delta, Some(accounting))
        }
    };
    let truncated = Draw::of(
        mechanism,
        "units with contributions dropped",
        1.0,
        total * TRUNCATED_SHARE,
        true,
    )
    .map_err(refuse)?;
    let weights: Vec<f64> = wanted.iter().map(|w| w.weight).collect();
    let shares = split(&weights, total * (1.0 - TRUNCATED_SHARE), mechanism);
    let draws: Vec<Draw> = wanted
        .into_iter()
        .zip(shares)
        .map(|(w, share)| Draw::of(mechanism, w.label, w.sensitivity, share, w.integer))
        .collect::<Result<_, _>>()
        .map_err(refuse)?;
    let units = draws[0].clone();
    let measures: Vec<MeasureDraws> = slots
        .into_iter()
        .map(|slot| match slot {
            Slots::Units => MeasureDraws::Units,
            Slots::One(i) => MeasureDraws::One(draws[i].clone()),
            Slots::Average { sum, count } => MeasureDraws::Average {
                sum: draws[sum].clone(),
                count: count.map(|i| draws[i].clone()),
            },
        })
        .collect();
    let disclosure = ruled
        .into_iter()
        .map(|ruled| {
            ruled
                .map(|(i, rules)| disclosure::plan(rules, draws[i].clone()))
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(refuse)?;
    let threshold_budget = match mechanism {
        Mechanism::Laplace => threshold_delta,
        // Public keys draw no threshold; a nominal budget keeps τ (the marking line) defined.
        Mechanism::Gaussian if public => config.delta,
        Mechanism::Gaussian => threshold_delta,
    };
    let threshold = Threshold::plan(&units, config.k, config.limits.max_groups, threshold_budget)
        .map_err(refuse)?;
    let accuracy = stated_accuracy(analysis, config, &units, &measures).map_err(refuse)?;
    Ok(NoisePlan {
        units,
        measures,
        truncated,
        disclosure,
        threshold,
        public,
        accounting,
        accuracy,
    })
}

/// Refuses a query one of whose measure's interval columns would take a name the product
/// already has.
fn check_interval_names(analysis: &Analysis) -> Result<(), Refusal> {
    let names: std::collections::HashSet<&str> = analysis
        .measures
        .iter()
        .map(|m| m.name.as_str())
        .chain(analysis.groups.iter().map(|g| g.name.as_str()))
        .collect();
    for measure in &analysis.measures {
        for suffix in [CI_LOW_SUFFIX, CI_HIGH_SUFFIX] {
            let interval = format!("{}{suffix}", measure.name);
            if names.contains(interval.as_str()) {
                return Err(Refusal::one(
                    Rule::PrivacyParameters,
                    format!(
                        "the product gives `{}` its 95 % interval in `{interval}`, which is also the name of an output column; rename that column",
                        measure.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Each measure's accuracy at 95 %, from the plan's draws (see `accuracy`).
fn stated_accuracy(
    analysis: &Analysis,
    config: &ReleaseConfig,
    units: &Draw,
    measures: &[MeasureDraws],
) -> Result<Vec<ColumnAccuracy>, noise::NoiseError> {
    let mut stated = Vec::with_capacity(measures.len());
    for (measure, draws) in analysis.measures.iter().zip(measures) {
        let (kind, error) = match (&measure.kind, draws) {
            (MeasureKind::CountUnits, _) => (accuracy::Kind::Count, units.half_width(ALPHA)?),
            (MeasureKind::CountRows { .. }, MeasureDraws::One(draw)) => {
                (accuracy::Kind::Count, draw.half_width(ALPHA)?)
            }
            (MeasureKind::Sum { lo, hi, .. }, MeasureDraws::One(draw)) => (
                accuracy::Kind::Sum { lo: *lo, hi: *hi },
                draw.half_width(ALPHA)?,
            ),
            (MeasureKind::Avg { lo, hi, .. }, MeasureDraws::Average { sum, count }) => {
                let a_s = sum.half_width(ALPHA / 2.0)?;
                let a_c = count.as_ref().unwrap_or(units).half_width(ALPHA / 2.0)?;
                (
                    accuracy::Kind::Average { lo: *lo, hi: *hi },
                    accuracy::average_error(a_s, a_c, *lo, *hi, f64::from(config.k.max(1))),
                )
            }
            _ => {
                return Err(noise::NoiseError::OpenDp(
                    "a measure without its draw".into(),
                ));
            }
        };
        stated.push(accuracy::statement(
            &measure.name,
            kind,
            error,
            config.k,
            config.epsilon,
        ));
    }
    Ok(stated)
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
    /// What the manifest states about accuracy, accounting and post-processing.
    pub(crate) statement: Statement,
    pub(crate) stats: ExecStats,
}

/// What a release states beyond its draws, for the manifest: none of it depends on the data
/// except through noisy quantities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// "laplace" or "gaussian", with the OpenDP constructors used.
    pub mechanism: String,
    pub accounting: Option<Accounting>,
    pub accuracy: Vec<ColumnAccuracy>,
    pub contributions_dropped: Option<ContributionsDropped>,
    pub disclosure: Vec<DisclosureReport>,
    pub post_processing: String,
}

/// What post-processing does to every release, in the manifest's words.
pub const POST_PROCESSING: &str = "values rounded to two decimals (counts and integer sums are whole numbers); counts and the low ends of their intervals raised to 0; sums over columns without negative bounds raised to 0; averages kept inside their column's bounds, and so are their intervals. Post-processing costs no privacy and moves no true value out of its interval.";

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

    /// Accuracy, accounting, truncation, disclosure rules and post-processing, for the
    /// manifest.
    pub fn statement(&self) -> &Statement {
        &self.statement
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
            statement: Statement::default(),
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
    let dropped = truncated(plan, config.noise, &bounded)
        .map_err(|_| fail("drawing the count of truncated units"))?;
    let mut released =
        assemble(analysis, plan, &bounded, selection, columns, stats).map_err(fail)?;
    released.statement.contributions_dropped = Some(dropped);
    Ok(released)
}

/// The noisy count of units whose contributions the bounds cut (sensitivity 1: one unit is
/// cut or not), raised to 0.
fn truncated(
    plan: &NoisePlan,
    source: noise::Source,
    bounded: &Bounded,
) -> Result<ContributionsDropped, noise::NoiseError> {
    let noisy = plan.truncated.integers(
        source,
        &[b"units with contributions dropped".as_slice()],
        vec![bounded.truncated_units],
    )?;
    Ok(ContributionsDropped {
        units_noisy: noisy.first().copied().unwrap_or(0).max(0),
        error: plan.truncated.half_width(ALPHA)?,
    })
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
    #[cfg(feature = "cluster")]
    if let Some(target) = sandbox.cluster() {
        // The same folds, made from the same spec, on Veil's executors (see `cluster`);
        // the merge below is the same.
        let spec = bounding::FoldSpec::new(analysis, config.limits, hasher, units_capacity);
        let (folds, stats) =
            crate::cluster::fold_on_cluster(sandbox, target, plan, spec, &unit_type, &key_types)
                .await
                .map_err(|e| (ReleaseFailure::Sandbox(e), ExecStats::default()))?;
        let bounded = bounding::finish(folds, key_types)
            .map_err(|what| (ReleaseFailure::Internal(what), stats))?;
        return Ok((bounded, stats));
    }
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

impl Column {
    /// The column as an Arrow array, NULL where `valid` says no.
    fn into_array(self, valid: impl Fn(usize) -> bool) -> ArrayRef {
        match self {
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
        }
    }
}

/// One measure's noisy values and each value's 95 % interval (see `accuracy`).
struct Measured {
    values: Column,
    low: Column,
    high: Column,
    /// Ruled measures: whether each cell's disclosure rules withhold it (see `disclosure`).
    protected: Option<Vec<bool>>,
}

impl Measured {
    /// Noisy counts, raised to 0, with intervals of half-width `half` (an integer).
    fn counts(noisy: Vec<i64>, half: f64) -> Self {
        let half = half as i64;
        let values: Vec<i64> = noisy.into_iter().map(|v| v.max(0)).collect();
        Self {
            low: Column::Int(values.iter().map(|v| (v - half).max(0)).collect()),
            high: Column::Int(values.iter().map(|v| v.saturating_add(half)).collect()),
            values: Column::Int(values),
            protected: None,
        }
    }

    /// Noisy integer sums with intervals of half-width `half` (an integer); raised to 0 when
    /// no value can be negative.
    fn int_sums(noisy: Vec<i64>, half: f64, floor_at_zero: bool) -> Self {
        let half = half as i64;
        let floor = |v: i64| if floor_at_zero { v.max(0) } else { v };
        let values: Vec<i64> = noisy.into_iter().map(floor).collect();
        Self {
            low: Column::Int(
                values
                    .iter()
                    .map(|v| floor(v.saturating_sub(half)))
                    .collect(),
            ),
            high: Column::Int(values.iter().map(|v| v.saturating_add(half)).collect()),
            values: Column::Int(values),
            protected: None,
        }
    }

    /// Noisy float sums, rounded to cents, with intervals of half-width `half` (rounded
    /// outwards); raised to 0 when no value can be negative.
    fn float_sums(noisy: Vec<f64>, half: f64, floor_at_zero: bool) -> Self {
        let floor = |v: f64| if floor_at_zero { v.max(0.0) } else { v };
        let values: Vec<f64> = noisy.into_iter().map(|v| round_cents(floor(v))).collect();
        Self {
            // The rounding moved each value by up to half a cent: widen by as much.
            low: Column::Float(
                values
                    .iter()
                    .map(|v| floor(cents_down(v - half - 0.005)))
                    .collect(),
            ),
            high: Column::Float(values.iter().map(|v| cents_up(v + half + 0.005)).collect()),
            values: Column::Float(values),
            protected: None,
        }
    }
}

/// Step 5: the noisy value of every measure for every selected group, with its interval.
fn measure(
    analysis: &Analysis,
    plan: &NoisePlan,
    source: noise::Source,
    bounded: &Bounded,
    selection: &Selection,
) -> Result<Vec<Measured>, noise::NoiseError> {
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
        let measured = match (&measure.kind, draws) {
            (MeasureKind::CountUnits, _) => {
                Measured::counts(selection.units.clone(), plan.units.half_width(ALPHA)?)
            }
            (MeasureKind::CountRows { .. }, MeasureDraws::One(draw)) => Measured::counts(
                draw.integers(source, &keys, totals.iter().map(count_of).collect())?,
                draw.half_width(ALPHA)?,
            ),
            (MeasureKind::Sum { lo, integer, .. }, MeasureDraws::One(draw)) => {
                let half = draw.half_width(ALPHA)?;
                let floor_at_zero = *lo >= 0.0;
                if *integer {
                    let sums =
                        draw.integers(source, &keys, totals.iter().map(int_sum_of).collect())?;
                    Measured::int_sums(sums, half, floor_at_zero)
                } else {
                    let sums =
                        draw.floats(source, &keys, totals.iter().map(float_sum_of).collect())?;
                    Measured::float_sums(sums, half, floor_at_zero)
                }
            }
            (
                MeasureKind::Avg {
                    lo, hi, integer, ..
                },
                MeasureDraws::Average { sum, count },
            ) => {
                // Offsets from the bounds' midpoint (see `plan_noise`, "Averages"): the bounded
                // sum less the midpoint times the bounded count.
                let (middle, _) = accuracy::midpoint(*lo, *hi, *integer);
                let sums: Vec<f64> = if *integer {
                    let offsets = totals
                        .iter()
                        .map(|t| {
                            int_sum_of(t)
                                .saturating_sub((middle as i64).saturating_mul(count_of(t)))
                        })
                        .collect();
                    sum.integers(source, &keys, offsets)?
                        .into_iter()
                        .map(|v| v as f64)
                        .collect()
                } else {
                    let offsets = totals
                        .iter()
                        .map(|t| float_sum_of(t) - middle * count_of(t) as f64)
                        .collect();
                    sum.floats(source, &keys, offsets)?
                };
                // The count: its own draw, or the distinct-unit draw (see `plan_noise`).
                let (counts, count_half) = match count {
                    Some(count) => (
                        count.integers(source, &keys, totals.iter().map(count_of).collect())?,
                        count.half_width(ALPHA / 2.0)?,
                    ),
                    None => (selection.units.clone(), plan.units.half_width(ALPHA / 2.0)?),
                };
                let sum_half = sum.half_width(ALPHA / 2.0)?;
                let mut values = Vec::with_capacity(sums.len());
                let mut low = Vec::with_capacity(sums.len());
                let mut high = Vec::with_capacity(sums.len());
                for (s, c) in sums.iter().zip(&counts) {
                    values.push(round_cents(
                        (middle + s / (*c).max(1) as f64).clamp(*lo, *hi),
                    ));
                    let (l, h) = accuracy::average_interval(
                        middle, *s, sum_half, *c as f64, count_half, *lo, *hi,
                    );
                    low.push(cents_down(l).max(*lo));
                    high.push(cents_up(h).min(*hi));
                }
                Measured {
                    values: Column::Float(values),
                    low: Column::Float(low),
                    high: Column::Float(high),
                    protected: None,
                }
            }
            _ => {
                return Err(noise::NoiseError::OpenDp(
                    "a measure without its draw".into(),
                ));
            }
        };
        let mut measured = measured;
        if let Some(Some(rules)) = plan.disclosure.get(j) {
            measured.protected = Some(disclosure::protected_groups(
                rules,
                source,
                bounded,
                &selection.keys,
                j,
            )?);
        }
        columns.push(measured);
    }
    Ok(columns)
}

/// Assembles the product in the operator's column order, each measure followed by its
/// interval's low and high ends. Marked cells (public keys whose noisy count was below k)
/// keep their key and get NULL measures and intervals.
fn assemble(
    analysis: &Analysis,
    plan: &NoisePlan,
    bounded: &Bounded,
    selection: Selection,
    columns: Vec<Measured>,
    stats: ExecStats,
) -> Result<Released, &'static str> {
    let keys: Vec<&GroupKeyBytes> = selection.keys.iter().collect();
    let key_columns = bounding::decode_keys(&bounded.converter, analysis.groups.len(), &keys)?;
    let mut fields = Vec::new();
    let mut reports = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let mut descriptions = Vec::new();
    let mut columns: Vec<Option<Measured>> = columns.into_iter().map(Some).collect();
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
                let measured = columns
                    .get_mut(j)
                    .and_then(Option::take)
                    .ok_or("placing an aggregate")?;
                let kind = match measure.kind {
                    MeasureKind::CountUnits => "noisy count of distinct units (never below 0)",
                    MeasureKind::CountRows { .. } => "noisy count of rows (never below 0)",
                    MeasureKind::Sum { .. } => "noisy sum (values clamped to the declared bounds)",
                    MeasureKind::Avg { .. } => {
                        "noisy average (noisy sum / noisy count, kept inside the bounds)"
                    }
                };
                let mut kind = if selection.public {
                    format!(
                        "{kind}; NULL where the noisy count of distinct units was below the threshold"
                    )
                } else {
                    kind.to_string()
                };
                let name = &measure.name;
                // A cell is shown unless it is marked (below τ) or its rules withhold it.
                let protected = measured.protected.clone();
                let marked = selection.marked.clone();
                let withheld = move |i: usize| protected.as_ref().is_some_and(|p| p[i]);
                if let Some(Some(rules)) = plan.disclosure.get(j) {
                    let described = rules.rules.describe();
                    kind = format!("{kind}; NULL where the {described} withheld the cell");
                    reports.push(DisclosureReport {
                        column: name.clone(),
                        rule: described,
                        cells_protected: (0..marked.len())
                            .filter(|i| !marked[*i] && withheld(*i))
                            .count() as u64,
                        decided_on: format!(
                            "each cell's margin plus noise ({}, scale {}) below {}: a cell the rules call sensitive is withheld with probability at least {} %, and the decision depends on the data only through that noisy margin",
                            rules.draw.mechanism_name(),
                            rules.draw.scale,
                            rules.threshold,
                            (1.0 - disclosure::SENSITIVE_CELL_MISS_PROBABILITY) * 100.0
                        ),
                    });
                }
                let valid = move |i: usize| !marked[i] && !withheld(i);
                for (column, suffix, what) in [
                    (measured.values, "", kind),
                    (
                        measured.low,
                        CI_LOW_SUFFIX,
                        format!("low end of `{name}`'s 95 % interval"),
                    ),
                    (
                        measured.high,
                        CI_HIGH_SUFFIX,
                        format!("high end of `{name}`'s 95 % interval"),
                    ),
                ] {
                    let array = column.into_array(&valid);
                    let column_name = format!("{name}{suffix}");
                    fields.push(Field::new(&column_name, array.data_type().clone(), true));
                    arrays.push(array);
                    descriptions.push(ColumnDescription {
                        name: column_name,
                        kind: what,
                    });
                }
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
        statement: Statement {
            mechanism: match plan.units.mechanism {
                Mechanism::Laplace => {
                    "laplace (OpenDP make_laplace / make_laplace_threshold; discrete on integers)"
                }
                Mechanism::Gaussian => {
                    "gaussian (OpenDP make_gaussian / make_gaussian_threshold; discrete on integers), zCDP"
                }
            }
            .into(),
            accounting: plan.accounting.clone(),
            accuracy: plan.accuracy.clone(),
            contributions_dropped: None,
            disclosure: reports,
            post_processing: POST_PROCESSING.into(),
        },
        stats,
    })
}

/// Rounds to two decimals: post-processing, so it costs no privacy, and it keeps products from
/// pretending to a precision the noise does not have.
fn round_cents(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Rounds down to two decimals: an interval's low end, widened rather than narrowed.
fn cents_down(value: f64) -> f64 {
    (value * 100.0).floor() / 100.0
}

/// Rounds up to two decimals: an interval's high end.
fn cents_up(value: f64) -> f64 {
    (value * 100.0).ceil() / 100.0
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
