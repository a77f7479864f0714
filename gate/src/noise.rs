//! Gate step 5: noise, from OpenDP only.
//!
//! Every noisy value comes from an OpenDP measurement: `make_laplace` over a vector (one entry
//! per released group, L1 metric), or `make_laplace_threshold` over a map of group keys to
//! distinct-unit counts (the existence threshold). On integers OpenDP samples the discrete
//! Laplace distribution, so counts and integer sums stay integers without rounding a float;
//! on floats it samples a Laplace distribution on a fine lattice (OpenDP's `k`). Randomness
//! is OpenDP's own secure source (OpenSSL).
//!
//! A template approved with the Gaussian mechanism (`Mechanism::Gaussian`) draws from OpenDP's
//! `make_gaussian` instead (discrete Gaussian on integers), calibrated to L2 sensitivities and
//! accounted in zero-concentrated DP: every draw gets a share ρ_i of the run's ρ, and ρ is the
//! largest for which OpenDP's own conversion (`ConcentratedMeasure::convert`, the map
//! `make_zCDP_to_approxDP` uses) gives at most the approved ε at the δ left for it
//! ([`rho_for`]). Grants and the ledger keep counting ε: a Gaussian run spends exactly the
//! approved (ε, δ), as OpenDP states the conversion.
//!
//! # Accuracy
//! Every draw states its accuracy ([`Draw::half_width`]): the half-width `a` of the interval
//! `[v − a, v + a]` that holds the true value with probability at least 1 − α, from OpenDP's
//! accuracy functions (`discrete_laplacian_scale_to_accuracy`, `laplacian_scale_to_accuracy`,
//! and the Gaussian pair). The noise distribution does not depend on the data, so neither does
//! the interval's width: stating it costs no privacy.
//!
//! # The ε plan
//! Which draws a release makes, with what sensitivity and what share of ε, depends only on the
//! query and the approval, never on the data, so `plan` fixes it before the budget is
//! reserved: every measurement is built and its privacy map checked then, and a plan OpenDP
//! refuses (bounds so wide the scale is not finite, a δ too small for any threshold) refuses the
//! job before any ε is spent. The plan is recorded in the manifest (`noise_scales`).
//!
//! # Proof Definition
//! For a draw with L1 sensitivity `Δ` over the vector of groups (see `bounding` for why `Δ` is
//! what it is) and a share `ε_i` of the run's ε, the scale is `b = Δ / ε_i`, and the OpenDP
//! privacy map of the very measurement that adds the noise is evaluated at `d_in = Δ` and must
//! return at most `ε_i` — so the privacy claim is OpenDP's, not ours. The shares add up to the
//! run's ε by sequential composition. AVG is post-processing of a noisy SUM and a noisy COUNT,
//! each with its own share; rounding, clamping at zero and marking a cell are post-processing
//! too and cost nothing.
//!
//! # k-anonymity and the existence threshold
//! Whether a group is shown is decided on its **noisy** distinct-unit count, never on a true
//! one: a decision on a true count flips on one person and is an exact oracle. One threshold
//! τ ≥ k serves both cases; [`Threshold::plan`] raises it from `k + b · ln(max_groups / 2δ)`
//! until OpenDP's privacy map for the thresholded release (below) gives a δ within the
//! approval's δ. For a group with fewer than `k` units the chance that its noisy count reaches
//! τ is at most `½·exp(−(τ−k+1)/b) ≤ δ / max_groups`, so across the groups one person touches
//! a group below k is shown with probability at most δ.
//! - With public key sets, every key is a row of the product, whatever the data. A key whose
//!   noisy count is below τ is *marked*: its measures are NULL. The marking is post-processing
//!   of the noisy count (one [`Draw`] over the vector of keys).
//! - Otherwise the very existence of a group is private. The counts of the groups that exist go
//!   through OpenDP's `make_laplace_threshold` (input metric L0,1,∞ with `d_in = (max_groups,
//!   max_groups, 1)`: one unit touches at most `max_groups` groups, each by one), which releases
//!   a group only if its noisy count reaches τ, and whose (ε, δ) OpenDP's privacy map states.
//!   Nothing is said about the groups left out, not even how many there were.

use std::collections::HashMap;

use opendp::accuracy::{
    discrete_gaussian_scale_to_accuracy, discrete_laplacian_scale_to_accuracy,
    gaussian_scale_to_accuracy, laplacian_scale_to_accuracy,
};
use opendp::combinators::ConcentratedMeasure;
use opendp::domains::{AtomDomain, MapDomain, VectorDomain};
use opendp::measurements::{
    make_gaussian, make_gaussian_threshold, make_laplace, make_laplace_threshold,
};
use opendp::measures::{Approximate, MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::{AbsoluteDistance, L0PInfDistance, L1Distance, L2Distance};

pub use crate::terms::Mechanism;

/// Relative slack allowed between OpenDP's computed ε and the share asked for (OpenDP
/// rounds its privacy map conservatively upwards).
const EPSILON_SLACK: f64 = 1e-9;

/// How many times [`plan`] raises τ looking for one whose δ fits.
const THRESHOLD_STEPS_MAX: u32 = 64;

/// Largest sensitivity a draw may have: beyond it a noisy number carries no information, and
/// the arithmetic that scales it is no longer exact.
pub const SENSITIVITY_MAX: f64 = 1e15;

/// Why noise could not be planned or added. No variant carries a data value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoiseError {
    #[error("OpenDP refused the measurement: {0}")]
    OpenDp(String),
    #[error("OpenDP's privacy map gives ε = {spent}, above the share {share}")]
    OverBudget { spent: f64, share: f64 },
    #[error(
        "the sensitivity of {what} is {sensitivity}, above the {SENSITIVITY_MAX} a noisy value can carry; narrow the column's bounds or lower max_groups / max_rows"
    )]
    Sensitivity { what: String, sensitivity: f64 },
    #[error(
        "no existence threshold keeps OpenDP's δ within the approved δ = {delta}; approve a larger δ or a larger ε"
    )]
    NoThreshold { delta: f64 },
    #[error(
        "the Gaussian mechanism needs δ > 0 (its zero-concentrated DP converts to (ε, δ) only for a positive δ); approve δ > 0, e.g. --delta 1e-6, or the Laplace mechanism"
    )]
    GaussianWithoutDelta,
    #[error(
        "OpenDP's zCDP conversion finds no ρ that fits ε = {epsilon} at δ = {delta}; approve a larger ε or δ"
    )]
    NoRho { epsilon: f64, delta: f64 },
}

fn check_sensitivity(label: &str, sensitivity: f64) -> Result<(), NoiseError> {
    if !(sensitivity.is_finite() && sensitivity > 0.0 && sensitivity <= SENSITIVITY_MAX) {
        return Err(NoiseError::Sensitivity {
            what: label.to_string(),
            sensitivity,
        });
    }
    Ok(())
}

/// How many halvings [`rho_for`] searches ρ with.
const RHO_SEARCH_STEPS: u32 = 100;

/// The largest ρ whose zero-concentrated DP OpenDP converts to at most `epsilon` at `delta`
/// (the conversion `make_zCDP_to_approxDP` applies), found by bisection on OpenDP's own map.
pub fn rho_for(epsilon: f64, delta: f64) -> Result<f64, NoiseError> {
    if delta.is_nan() || delta <= 0.0 {
        return Err(NoiseError::GaussianWithoutDelta);
    }
    let fits =
        |rho: f64| -> Result<bool, NoiseError> { Ok(epsilon_of_rho(rho, delta)? <= epsilon) };
    // ρ = ε²/4 never exceeds ε at any δ < 1 (ε(ρ, δ) ≥ ρ + 2√ρ·… > 2√ρ·√ln(1/δ) ≥ …); start
    // from a ρ that fits and one that does not.
    let mut low = 0.0;
    let mut high = epsilon.max(1.0);
    while fits(high)? {
        high *= 2.0;
        if !high.is_finite() {
            return Err(NoiseError::NoRho { epsilon, delta });
        }
    }
    for _ in 0..RHO_SEARCH_STEPS {
        let middle = (low + high) / 2.0;
        if middle <= low || middle >= high {
            break;
        }
        if fits(middle)? {
            low = middle;
        } else {
            high = middle;
        }
    }
    if low <= 0.0 {
        return Err(NoiseError::NoRho { epsilon, delta });
    }
    Ok(low)
}

/// The ε at which OpenDP's conversion of `rho`-zCDP gives `delta`.
pub fn epsilon_of_rho(rho: f64, delta: f64) -> Result<f64, NoiseError> {
    ZeroConcentratedDivergence::convert(rho)
        .and_then(|profile| profile.epsilon(delta))
        .map_err(opendp)
}

fn opendp(error: opendp::error::Error) -> NoiseError {
    NoiseError::OpenDp(error.variant.to_string())
}

/// Where noise comes from: OpenDP, always, in every shipped binary.
///
/// The `test-noise` feature (enabled only by the test build) adds `Source::Seeded`: every draw
/// a deterministic function of (seed, draw, group key), so two runs on neighbouring datasets add
/// *the same* noise to the same group and their outputs can be compared exactly, and the gate
/// files' verdicts do not move with the noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    #[default]
    OpenDp,
    #[cfg(feature = "test-noise")]
    Seeded(u64),
}

type IntegerMeasurement = opendp::core::Measurement<
    VectorDomain<AtomDomain<i64>>,
    L1Distance<i64>,
    MaxDivergence,
    Vec<i64>,
>;

type FloatMeasurement = opendp::core::Measurement<
    VectorDomain<AtomDomain<f64>>,
    L1Distance<f64>,
    MaxDivergence,
    Vec<f64>,
>;

type IntegerGaussian = opendp::core::Measurement<
    VectorDomain<AtomDomain<i64>>,
    L2Distance<i64>,
    ZeroConcentratedDivergence,
    Vec<i64>,
>;

type FloatGaussian = opendp::core::Measurement<
    VectorDomain<AtomDomain<f64>>,
    L2Distance<f64>,
    ZeroConcentratedDivergence,
    Vec<f64>,
>;

/// One noisy draw: what it measures, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    /// What the manifest calls it (`distinct units`, `income (sum)`, …).
    pub label: String,
    /// Laplace (pure ε-DP, L1) or Gaussian (ρ-zCDP, L2).
    pub mechanism: Mechanism,
    /// Sensitivity over the vector of groups: L1 for Laplace, L2 for Gaussian.
    pub sensitivity: f64,
    /// Laplace: its share of the run's ε. Gaussian: 0 (see `rho`).
    pub epsilon: f64,
    /// Gaussian: its share of the run's ρ. Laplace: 0.
    pub rho: f64,
    /// Laplace: `sensitivity / epsilon`; Gaussian: σ = `sensitivity / √(2ρ)`.
    pub scale: f64,
    /// Integer (discrete noise) or float.
    pub integer: bool,
}

impl Draw {
    /// A Laplace draw with its scale, checked against OpenDP's privacy map.
    pub fn new(
        label: impl Into<String>,
        sensitivity: f64,
        epsilon: f64,
        integer: bool,
    ) -> Result<Self, NoiseError> {
        let label = label.into();
        check_sensitivity(&label, sensitivity)?;
        let draw = Self {
            scale: sensitivity / epsilon,
            label,
            mechanism: Mechanism::Laplace,
            sensitivity,
            epsilon,
            rho: 0.0,
            integer,
        };
        draw.check_measurement()?;
        Ok(draw)
    }

    /// A Gaussian draw of L2 `sensitivity` and share `rho` of the run's ρ, checked against
    /// OpenDP's privacy map.
    pub fn gaussian(
        label: impl Into<String>,
        sensitivity: f64,
        rho: f64,
        integer: bool,
    ) -> Result<Self, NoiseError> {
        let label = label.into();
        check_sensitivity(&label, sensitivity)?;
        let draw = Self {
            scale: sensitivity / (2.0 * rho).sqrt(),
            label,
            mechanism: Mechanism::Gaussian,
            sensitivity,
            epsilon: 0.0,
            rho,
            integer,
        };
        draw.check_measurement()?;
        Ok(draw)
    }

    /// A draw of `mechanism` with `share` of the run's ε (Laplace) or ρ (Gaussian).
    pub fn of(
        mechanism: Mechanism,
        label: impl Into<String>,
        sensitivity: f64,
        share: f64,
        integer: bool,
    ) -> Result<Self, NoiseError> {
        match mechanism {
            Mechanism::Laplace => Self::new(label, sensitivity, share, integer),
            Mechanism::Gaussian => Self::gaussian(label, sensitivity, share, integer),
        }
    }

    /// Its share of the run's ε (Laplace) or ρ (Gaussian).
    pub fn share(&self) -> f64 {
        match self.mechanism {
            Mechanism::Laplace => self.epsilon,
            Mechanism::Gaussian => self.rho,
        }
    }

    /// The mechanism's name, as the manifest states it.
    pub fn mechanism_name(&self) -> &'static str {
        match (self.mechanism, self.integer) {
            (Mechanism::Laplace, true) => "discrete Laplace (OpenDP make_laplace)",
            (Mechanism::Laplace, false) => "Laplace (OpenDP make_laplace)",
            (Mechanism::Gaussian, true) => "discrete Gaussian (OpenDP make_gaussian)",
            (Mechanism::Gaussian, false) => "Gaussian (OpenDP make_gaussian)",
        }
    }

    /// The half-width `a` of this draw's interval at confidence 1 − `alpha`: the noise lies in
    /// `[−a, a]` with probability at least 1 − `alpha`, as OpenDP's accuracy functions state.
    /// On integers OpenDP's accuracy `t` bounds `P(|noise| ≥ t) ≤ α`, so the integer
    /// half-width is `⌈t⌉ − 1`.
    pub fn half_width(&self, alpha: f64) -> Result<f64, NoiseError> {
        let accuracy = match (self.mechanism, self.integer) {
            (Mechanism::Laplace, true) => discrete_laplacian_scale_to_accuracy(self.scale, alpha),
            (Mechanism::Laplace, false) => laplacian_scale_to_accuracy(self.scale, alpha),
            (Mechanism::Gaussian, true) => discrete_gaussian_scale_to_accuracy(self.scale, alpha),
            (Mechanism::Gaussian, false) => gaussian_scale_to_accuracy(self.scale, alpha),
        }
        .map_err(opendp)?;
        Ok(if self.integer {
            (accuracy.ceil() - 1.0).max(0.0)
        } else {
            accuracy
        })
    }

    fn check_measurement(&self) -> Result<(), NoiseError> {
        match (self.mechanism, self.integer) {
            (Mechanism::Laplace, true) => self.integer_measurement().map(drop),
            (Mechanism::Laplace, false) => self.float_measurement().map(drop),
            (Mechanism::Gaussian, true) => self.integer_gaussian().map(drop),
            (Mechanism::Gaussian, false) => self.float_gaussian().map(drop),
        }
    }

    fn check(&self, spent: f64) -> Result<(), NoiseError> {
        let share = self.share();
        if spent > share * (1.0 + EPSILON_SLACK) {
            return Err(NoiseError::OverBudget { spent, share });
        }
        Ok(())
    }

    /// The integer L2 distance OpenDP's discrete Gaussian map takes: the sensitivity rounded
    /// up, so the privacy map is evaluated at no less than the true L2 bound.
    fn integer_sensitivity(&self) -> i64 {
        self.sensitivity.ceil() as i64
    }

    fn integer_gaussian(&self) -> Result<IntegerGaussian, NoiseError> {
        let measurement = make_gaussian::<_, _, ZeroConcentratedDivergence>(
            VectorDomain::new(AtomDomain::<i64>::default()),
            L2Distance::<i64>::default(),
            self.scale,
            None,
        )
        .map_err(opendp)?;
        self.check(
            measurement
                .map(&self.integer_sensitivity())
                .map_err(opendp)?,
        )?;
        Ok(measurement)
    }

    fn float_gaussian(&self) -> Result<FloatGaussian, NoiseError> {
        let measurement = make_gaussian::<_, _, ZeroConcentratedDivergence>(
            VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
            L2Distance::<f64>::default(),
            self.scale,
            None,
        )
        .map_err(opendp)?;
        self.check(measurement.map(&self.sensitivity).map_err(opendp)?)?;
        Ok(measurement)
    }

    fn integer_measurement(&self) -> Result<IntegerMeasurement, NoiseError> {
        let measurement = make_laplace::<_, _, MaxDivergence>(
            VectorDomain::new(AtomDomain::<i64>::default()),
            L1Distance::<i64>::default(),
            self.scale,
            None,
        )
        .map_err(opendp)?;
        self.check(
            measurement
                .map(&self.integer_sensitivity())
                .map_err(opendp)?,
        )?;
        Ok(measurement)
    }

    fn float_measurement(&self) -> Result<FloatMeasurement, NoiseError> {
        let measurement = make_laplace::<_, _, MaxDivergence>(
            VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
            L1Distance::<f64>::default(),
            self.scale,
            None,
        )
        .map_err(opendp)?;
        self.check(measurement.map(&self.sensitivity).map_err(opendp)?)?;
        Ok(measurement)
    }

    /// Adds this draw's noise to integer values, one per group (`keys` name the groups; only
    /// the test-only seeded source looks at them).
    pub fn integers(
        &self,
        source: Source,
        keys: &[&[u8]],
        values: Vec<i64>,
    ) -> Result<Vec<i64>, NoiseError> {
        #[cfg(feature = "test-noise")]
        if let Source::Seeded(seed) = source {
            return Ok(seeded::integers(seed, self, keys, &values));
        }
        let _ = (source, keys);
        match self.mechanism {
            Mechanism::Laplace => self.integer_measurement()?.invoke(&values),
            Mechanism::Gaussian => self.integer_gaussian()?.invoke(&values),
        }
        .map_err(opendp)
    }

    /// Adds this draw's noise to float values, one per group.
    pub fn floats(
        &self,
        source: Source,
        keys: &[&[u8]],
        values: Vec<f64>,
    ) -> Result<Vec<f64>, NoiseError> {
        #[cfg(feature = "test-noise")]
        if let Source::Seeded(seed) = source {
            return Ok(seeded::floats(seed, self, keys, &values));
        }
        let _ = (source, keys);
        match self.mechanism {
            Mechanism::Laplace => self.float_measurement()?.invoke(&values),
            Mechanism::Gaussian => self.float_gaussian()?.invoke(&values),
        }
        .map_err(opendp)
    }
}

/// The existence threshold of a release whose group keys are not all public.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// A group is released when its noisy distinct-unit count reaches τ.
    pub tau: i64,
    /// OpenDP's δ for the release at this τ (at most the approved δ).
    pub delta: f64,
    /// Most groups one unit touches (the map metric's L0 distance).
    max_groups: u32,
}

type ThresholdMeasurement = opendp::core::Measurement<
    MapDomain<AtomDomain<String>, AtomDomain<i64>>,
    L0PInfDistance<1, AbsoluteDistance<i64>>,
    Approximate<MaxDivergence>,
    HashMap<String, i64>,
>;

type GaussianThresholdMeasurement = opendp::core::Measurement<
    MapDomain<AtomDomain<String>, AtomDomain<i64>>,
    L0PInfDistance<2, AbsoluteDistance<i64>>,
    Approximate<ZeroConcentratedDivergence>,
    HashMap<String, i64>,
>;

impl Threshold {
    /// The smallest τ ≥ k, from a tail bound of the units draw's noise upwards, whose OpenDP δ
    /// fits in `delta`.
    pub fn plan(units: &Draw, k: u32, max_groups: u32, delta: f64) -> Result<Self, NoiseError> {
        let tail = (f64::from(max_groups) / (2.0 * delta)).ln().max(0.0);
        let start = f64::from(k)
            + match units.mechanism {
                Mechanism::Laplace => units.scale * tail,
                Mechanism::Gaussian => units.scale * (2.0 * tail).sqrt(),
            };
        let mut tau = start.ceil().max(f64::from(k)) as i64;
        for _ in 0..THRESHOLD_STEPS_MAX {
            let candidate = Self {
                tau,
                delta: 0.0,
                max_groups,
            };
            let (share, spent_delta) = candidate.spent(units)?;
            units.check(share)?;
            if spent_delta <= delta {
                return Ok(Self {
                    tau,
                    delta: spent_delta,
                    max_groups,
                });
            }
            // Each step adds one noise scale: δ falls by about a factor e per step (Laplace),
            // faster (Gaussian).
            tau = tau.saturating_add(units.scale.ceil().max(1.0) as i64);
        }
        Err(NoiseError::NoThreshold { delta })
    }

    /// OpenDP's (ε or ρ, δ) for the thresholded release, at one unit's most: `max_groups`
    /// groups, each moved by one.
    fn spent(&self, units: &Draw) -> Result<(f64, f64), NoiseError> {
        match units.mechanism {
            Mechanism::Laplace => self
                .laplace(units)?
                .map(&(self.max_groups, i64::from(self.max_groups), 1))
                .map_err(opendp),
            Mechanism::Gaussian => self
                .gaussian(units)?
                .map(&(self.max_groups, units.integer_sensitivity(), 1))
                .map_err(opendp),
        }
    }

    fn laplace(&self, units: &Draw) -> Result<ThresholdMeasurement, NoiseError> {
        make_laplace_threshold::<_, _, Approximate<MaxDivergence>>(
            MapDomain::new(
                AtomDomain::<String>::default(),
                AtomDomain::<i64>::default(),
            ),
            L0PInfDistance(AbsoluteDistance::<i64>::default()),
            units.scale,
            self.tau,
            None,
        )
        .map_err(opendp)
    }

    fn gaussian(&self, units: &Draw) -> Result<GaussianThresholdMeasurement, NoiseError> {
        make_gaussian_threshold::<_, _, Approximate<ZeroConcentratedDivergence>>(
            MapDomain::new(
                AtomDomain::<String>::default(),
                AtomDomain::<i64>::default(),
            ),
            L0PInfDistance(AbsoluteDistance::<i64>::default()),
            units.scale,
            self.tau,
            None,
        )
        .map_err(opendp)
    }

    /// Noisy distinct-unit counts of the groups that clear τ, by key (hex of the group key).
    pub fn release(
        &self,
        source: Source,
        units: &Draw,
        counts: HashMap<String, i64>,
    ) -> Result<HashMap<String, i64>, NoiseError> {
        #[cfg(feature = "test-noise")]
        if let Source::Seeded(seed) = source {
            return Ok(seeded::threshold(seed, units, self.tau, &counts));
        }
        let _ = source;
        match units.mechanism {
            Mechanism::Laplace => self.laplace(units)?.invoke(&counts),
            Mechanism::Gaussian => self.gaussian(units)?.invoke(&counts),
        }
        .map_err(opendp)
    }
}

/// Test-only noise (the `test-noise` feature; see [`Source`]): discrete and continuous
/// Laplace by inverse CDF from a BLAKE3-derived uniform, so each draw depends on the seed, the
/// draw's label and the group key only.
#[cfg(feature = "test-noise")]
mod seeded {
    use std::collections::HashMap;

    use super::Draw;

    /// A uniform number in (0, 1) from (seed, draw label, key).
    fn uniform(seed: u64, label: &str, key: &[u8]) -> f64 {
        let mut hasher = blake3::Hasher::new_derive_key("veil test noise v1");
        hasher.update(&seed.to_le_bytes());
        hasher.update(&(label.len() as u64).to_le_bytes());
        hasher.update(label.as_bytes());
        hasher.update(key);
        let bytes = hasher.finalize();
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes.as_bytes()[..8]);
        ((u64::from_le_bytes(word) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Laplace(0, scale) by inverse CDF.
    fn laplace(seed: u64, label: &str, key: &[u8], scale: f64) -> f64 {
        let u = uniform(seed, label, key) - 0.5;
        -scale * u.signum() * (1.0 - 2.0 * u.abs()).ln()
    }

    /// Normal(0, scale²) by Box–Muller from two uniforms.
    fn gaussian(seed: u64, label: &str, key: &[u8], scale: f64) -> f64 {
        let u1 = uniform(seed, label, key);
        let u2 = uniform(seed, &format!("{label}#2"), key);
        scale * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// The draw's noise for one group.
    fn noise(seed: u64, draw: &Draw, key: &[u8]) -> f64 {
        match draw.mechanism {
            super::Mechanism::Laplace => laplace(seed, &draw.label, key, draw.scale),
            super::Mechanism::Gaussian => gaussian(seed, &draw.label, key, draw.scale),
        }
    }

    pub(super) fn integers(seed: u64, draw: &Draw, keys: &[&[u8]], values: &[i64]) -> Vec<i64> {
        keys.iter()
            .zip(values)
            .map(|(key, v)| v.saturating_add(noise(seed, draw, key).round() as i64))
            .collect()
    }

    pub(super) fn floats(seed: u64, draw: &Draw, keys: &[&[u8]], values: &[f64]) -> Vec<f64> {
        keys.iter()
            .zip(values)
            .map(|(key, v)| v + noise(seed, draw, key))
            .collect()
    }

    pub(super) fn threshold(
        seed: u64,
        draw: &Draw,
        tau: i64,
        counts: &HashMap<String, i64>,
    ) -> HashMap<String, i64> {
        counts
            .iter()
            .filter_map(|(key, v)| {
                let key_bytes = hex::decode(key).unwrap_or_default();
                let drawn = noise(seed, draw, &key_bytes).round() as i64;
                let noisy = v.saturating_add(drawn);
                (noisy >= tau).then(|| (key.clone(), noisy))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_noise_stays_integer_and_centred() -> Result<(), NoiseError> {
        let draw = Draw::new("t", 1.0, 1.0, true)?;
        let keys: Vec<&[u8]> = vec![b"".as_slice(); 4000];
        let values = draw.integers(Source::OpenDp, &keys, vec![1000; 4000])?;
        let mean = values.iter().map(|v| *v as f64).sum::<f64>() / 4000.0;
        // Discrete Laplace with scale 1 has standard deviation < 1.5; the mean of 4000 draws
        // is within 0.2 of 1000 except with probability far below 1e-9.
        assert!((mean - 1000.0).abs() < 0.2, "mean {mean}");
        assert_eq!(draw.scale, 1.0);
        Ok(())
    }

    #[test]
    fn threshold_grows_with_smaller_delta_and_is_at_least_k() -> Result<(), NoiseError> {
        let units = Draw::new("distinct units", 1.0, 1.0, true)?;
        let loose = Threshold::plan(&units, 5, 1, 1e-3)?;
        let tight = Threshold::plan(&units, 5, 1, 1e-9)?;
        assert!(tight.tau > loose.tau && loose.tau >= 5);
        assert!(tight.delta <= 1e-9 && loose.delta <= 1e-3);
        Ok(())
    }

    #[test]
    fn an_infinite_sensitivity_is_refused_before_any_draw() {
        assert!(matches!(
            Draw::new("income (sum)", f64::INFINITY, 1.0, false),
            Err(NoiseError::Sensitivity { .. })
        ));
        assert!(matches!(
            Draw::new("income (sum)", 1.7e308, 1.0, false),
            Err(NoiseError::Sensitivity { .. })
        ));
    }
}
