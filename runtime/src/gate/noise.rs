//! Gate step 5: noise, from OpenDP only.
//!
//! Every noisy value comes from an OpenDP `make_laplace` measurement over a vector (one entry
//! per released group), with the L1 metric. On integer vectors OpenDP samples the discrete
//! Laplace distribution, so counts and integer sums stay integers without rounding a float;
//! on float vectors it samples a Laplace distribution on a fine lattice (OpenDP's `k`).
//! Randomness is OpenDP's own secure source (OpenSSL).
//!
//! # Proof Definition
//! For a measure with L1 sensitivity `Δ` over the vector of groups (see `bounding` for why
//! `Δ` is what it is) and a share `ε_i` of the run's ε, the scale is `b = Δ / ε_i`, and the
//! OpenDP privacy map of the very measurement that adds the noise is evaluated at `d_in = Δ`
//! and must return at most `ε_i` — so the privacy claim is OpenDP's, not ours. The shares add
//! up to the run's ε by sequential composition. AVG is post-processing of a noisy SUM and a
//! noisy COUNT, each with its own share; rounding and clamping at zero are post-processing
//! too and cost nothing.
//!
//! # The existence threshold
//! When group keys are not all from public key sets, the very existence of a group is
//! private. A group is then released only if its noisy distinct-unit count (scale
//! `b = max_groups / ε_u`) reaches `τ = k + b · ln(max_groups / (2δ))`. One unit touches at
//! most `max_groups` groups; for each, the chance that a group which exists only because of
//! that unit (true count exactly `k`, the smallest that passes the k rule) clears `τ` is
//! `½·exp(−(τ−k)/b) = δ / max_groups`, so across its groups at most `δ`.

use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_laplace;
use opendp::measures::MaxDivergence;
use opendp::metrics::L1Distance;

/// Relative slack allowed between OpenDP's computed ε and the share asked for (OpenDP
/// rounds its privacy map conservatively upwards).
const EPSILON_SLACK: f64 = 1e-9;

/// Why noise could not be added. No variant carries a data value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoiseError {
    #[error("OpenDP refused the measurement: {0}")]
    OpenDp(String),
    #[error("OpenDP's privacy map gives ε = {spent}, above the share {share}")]
    OverBudget { spent: f64, share: f64 },
}

/// A noisy vector and the scale it was drawn with.
#[derive(Debug, Clone, PartialEq)]
pub struct Noisy<T> {
    pub values: Vec<T>,
    pub scale: f64,
}

/// Adds discrete Laplace noise to integer values with L1 sensitivity `sensitivity`.
pub fn laplace_integers(
    values: Vec<i64>,
    sensitivity: i64,
    epsilon: f64,
) -> Result<Noisy<i64>, NoiseError> {
    let scale = sensitivity as f64 / epsilon;
    let measurement = make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L1Distance::<i64>::default(),
        scale,
        None,
    )
    .map_err(|e| NoiseError::OpenDp(e.variant.to_string()))?;
    let spent = measurement
        .map(&sensitivity)
        .map_err(|e| NoiseError::OpenDp(e.variant.to_string()))?;
    if spent > epsilon * (1.0 + EPSILON_SLACK) {
        return Err(NoiseError::OverBudget {
            spent,
            share: epsilon,
        });
    }
    let values = measurement
        .invoke(&values)
        .map_err(|e| NoiseError::OpenDp(e.variant.to_string()))?;
    Ok(Noisy { values, scale })
}

/// Adds Laplace noise to float values with L1 sensitivity `sensitivity`.
pub fn laplace_floats(
    values: Vec<f64>,
    sensitivity: f64,
    epsilon: f64,
) -> Result<Noisy<f64>, NoiseError> {
    let scale = sensitivity / epsilon;
    let measurement = make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        L1Distance::<f64>::default(),
        scale,
        None,
    )
    .map_err(|e| NoiseError::OpenDp(e.variant.to_string()))?;
    let spent = measurement
        .map(&sensitivity)
        .map_err(|e| NoiseError::OpenDp(e.variant.to_string()))?;
    if spent > epsilon * (1.0 + EPSILON_SLACK) {
        return Err(NoiseError::OverBudget {
            spent,
            share: epsilon,
        });
    }
    let values = measurement
        .invoke(&values)
        .map_err(|e| NoiseError::OpenDp(e.variant.to_string()))?;
    Ok(Noisy { values, scale })
}

/// The existence threshold τ for non-public group keys (see the module docs).
pub fn existence_threshold(k: u32, max_groups: u32, unit_scale: f64, delta: f64) -> f64 {
    f64::from(k) + unit_scale * (f64::from(max_groups) / (2.0 * delta)).ln().max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_noise_stays_integer_and_centred() -> Result<(), NoiseError> {
        let draws = laplace_integers(vec![1000; 4000], 1, 1.0)?;
        let mean = draws.values.iter().map(|v| *v as f64).sum::<f64>() / 4000.0;
        // Discrete Laplace with scale 1 has standard deviation < 1.5; the mean of 4000 draws
        // is within 0.2 of 1000 except with probability far below 1e-9.
        assert!((mean - 1000.0).abs() < 0.2, "mean {mean}");
        assert_eq!(draws.scale, 1.0);
        Ok(())
    }

    #[test]
    fn threshold_grows_with_smaller_delta() {
        let loose = existence_threshold(5, 1, 1.0, 1e-3);
        let tight = existence_threshold(5, 1, 1.0, 1e-9);
        assert!(tight > loose && loose > 5.0);
    }
}
