//! The privacy and resource terms the bureau pins when it approves a template: what one run
//! may spend (ε, δ), how many units a released group needs (k), how much one unit may
//! contribute (groups, rows), and the run's resource limits.
//!
//! The domain's approval record holds these terms beside its price; the kernel reads only
//! these.
//!
//! ε and δ are kept in their stored units, [`MicroEpsilon`] and [`PicoDelta`]: integer counts
//! of millionths and trillionths, so that summing a month of spends never drifts and a raw
//! `i64` of the wrong unit is a compile error. They become `f64` only at the edges: when a
//! user types them, when the noise is drawn, and when they are shown.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sandbox::SandboxLimits;
use crate::sandbox::wasm::WasmLimits;

/// Millionths of ε per unit: ε is stored and summed as an integer count of millionths.
pub const MICRO: f64 = 1_000_000.0;
/// Trillionths of δ per unit: δ is stored and summed as an integer count of trillionths.
pub const PICO: f64 = 1_000_000_000_000.0;

/// Why an ε or δ a user gave cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantityError {
    /// ε is not a positive, finite number.
    EpsilonNotPositive,
    /// ε is positive but rounds to less than one millionth, which would store as nothing.
    EpsilonBelowResolution,
    /// δ is not a finite number in [0, 1).
    DeltaOutOfRange,
}

impl QuantityError {
    /// What the user should change, naming the flag or field (`what`) that held the value.
    pub fn message(self, what: &str) -> String {
        match self {
            Self::EpsilonNotPositive => format!("{what} must be a positive number"),
            Self::EpsilonBelowResolution => format!("{what} must be at least 0.000001"),
            Self::DeltaOutOfRange => format!("{what} must be in [0, 1)"),
        }
    }
}

/// ε in its stored unit: an integer count of millionths. Serializes as that integer.
///
/// Displays as ε itself (`0.5`, not `500000`), since that is what a reader of a message
/// knows.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MicroEpsilon(pub i64);

impl MicroEpsilon {
    /// No ε at all: what a run that never reserved spent.
    pub const ZERO: Self = Self(0);

    /// A user's ε in millionths, rounded to the nearest; refuses ε that is not positive and
    /// finite or that rounds to nothing.
    pub fn from_epsilon(epsilon: f64) -> Result<Self, QuantityError> {
        if !(epsilon.is_finite() && epsilon > 0.0) {
            return Err(QuantityError::EpsilonNotPositive);
        }
        let micro = (epsilon * MICRO).round();
        if micro < 1.0 {
            return Err(QuantityError::EpsilonBelowResolution);
        }
        // `as` saturates: an ε beyond i64::MAX millionths stores as the largest count, which
        // every caller's own upper limit refuses long before.
        Ok(Self(micro as i64))
    }

    /// ε rounded to the nearest millionth, for a value its source has already checked (a
    /// dataset policy's budget).
    pub fn rounded(epsilon: f64) -> Self {
        Self((epsilon * MICRO).round() as i64)
    }

    /// ε as a number, for the noise and for display.
    pub fn epsilon(self) -> f64 {
        self.0 as f64 / MICRO
    }

    /// The sum, saturating at the largest count instead of wrapping.
    pub fn saturating_add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }

    /// What is left of `self` after `spent`: never below zero.
    pub fn left_after(self, spent: Self) -> Self {
        Self(self.0.saturating_sub(spent.0).max(0))
    }
}

impl fmt::Display for MicroEpsilon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.epsilon())
    }
}

/// δ in its stored unit: an integer count of trillionths. Serializes as that integer.
///
/// Displays as δ itself, like [`MicroEpsilon`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct PicoDelta(pub i64);

impl PicoDelta {
    /// No δ at all.
    pub const ZERO: Self = Self(0);

    /// A user's δ in trillionths, rounded to the nearest; refuses δ outside [0, 1).
    pub fn from_delta(delta: f64) -> Result<Self, QuantityError> {
        if !(delta.is_finite() && (0.0..1.0).contains(&delta)) {
            return Err(QuantityError::DeltaOutOfRange);
        }
        Ok(Self((delta * PICO).round() as i64))
    }

    /// δ as a number, for the noise and for display.
    pub fn delta(self) -> f64 {
        self.0 as f64 / PICO
    }

    /// The sum, saturating at the largest count instead of wrapping.
    pub fn saturating_add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }

    /// What is left of `self` after `spent`: never below zero.
    pub fn left_after(self, spent: Self) -> Self {
        Self(self.0.saturating_sub(spent.0).max(0))
    }
}

impl fmt::Display for PicoDelta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.delta())
    }
}

/// Which noise a template's releases draw, chosen by the bureau at approval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// Laplace noise (discrete on integers), L1 sensitivities, pure ε-DP per draw.
    #[default]
    Laplace,
    /// Gaussian noise (discrete on integers), L2 sensitivities, accounted in zero-concentrated
    /// DP and converted to the approved (ε, δ) by OpenDP. Cheaper per group when one unit may
    /// touch many groups (L2 grows with √max_groups, L1 with max_groups); needs δ > 0.
    Gaussian,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Laplace => "laplace",
            Self::Gaussian => "gaussian",
        }
    }

    /// Reads `laplace` or `gaussian`, as a flag or an API field gives it.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "laplace" => Some(Self::Laplace),
            "gaussian" => Some(Self::Gaussian),
            _ => None,
        }
    }
}

/// One approved run's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    /// ε spent by one run.
    pub micro_epsilon: MicroEpsilon,
    /// δ spent by one run.
    pub pico_delta: PicoDelta,
    /// Minimum distinct privacy units behind a released group.
    pub k: u32,
    /// Most groups one unit may contribute to.
    pub max_groups: u32,
    /// Most rows one unit may contribute to one group.
    pub max_rows: u32,
    /// Memory one run may reserve, in MiB.
    pub memory_mib: u32,
    /// Wall-clock time one run's query may take, in seconds.
    pub wall_seconds: u32,
    /// WASM templates: fuel one unit's call may burn.
    pub wasm_fuel_per_unit: u64,
    /// WASM templates: linear memory one unit's instance may grow to, in MiB.
    pub wasm_memory_mib: u32,
    /// The noise its releases draw (Laplace for approvals made before the choice existed).
    #[serde(default)]
    pub mechanism: Mechanism,
}

impl Terms {
    /// The sandbox limits these terms pin.
    pub fn limits(&self) -> SandboxLimits {
        SandboxLimits {
            memory_bytes: self.memory_mib as usize * 1024 * 1024,
            wall_ms: u64::from(self.wall_seconds) * 1000,
            ..SandboxLimits::default()
        }
    }

    /// The per-unit limits a WASM template's mapper runs under (before the mapping stage cuts
    /// the unit's deadline, see [`crate::mapping::unit_limits`]).
    pub fn wasm_limits(&self) -> WasmLimits {
        WasmLimits {
            fuel_per_unit: self.wasm_fuel_per_unit,
            memory_bytes: self.wasm_memory_mib as usize * 1024 * 1024,
            ..WasmLimits::default()
        }
    }

    /// ε of one run.
    pub fn epsilon(&self) -> f64 {
        self.micro_epsilon.epsilon()
    }

    /// δ of one run.
    pub fn delta(&self) -> f64 {
        self.pico_delta.delta()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilon_and_delta_round_trip_through_their_stored_units() {
        for epsilon in [0.000_001, 0.1, 0.5, 1.0, 2.75, 100.0] {
            let stored = MicroEpsilon::from_epsilon(epsilon).expect("a valid ε");
            assert_eq!(stored.epsilon(), epsilon, "ε {epsilon}");
            assert_eq!(stored.to_string(), epsilon.to_string());
            // The JSON form is the bare count, as it was before the newtype.
            let json = serde_json::to_string(&stored).expect("json");
            assert_eq!(json, stored.0.to_string());
            assert_eq!(
                serde_json::from_str::<MicroEpsilon>(&json).ok(),
                Some(stored)
            );
        }
        assert_eq!(MicroEpsilon::from_epsilon(0.5), Ok(MicroEpsilon(500_000)));
        for delta in [0.0, 1e-12, 1e-6, 0.25] {
            let stored = PicoDelta::from_delta(delta).expect("a valid δ");
            assert_eq!(stored.delta(), delta, "δ {delta}");
            let json = serde_json::to_string(&stored).expect("json");
            assert_eq!(serde_json::from_str::<PicoDelta>(&json).ok(), Some(stored));
        }
        assert_eq!(PicoDelta::from_delta(1e-6), Ok(PicoDelta(1_000_000)));
    }

    #[test]
    fn quantities_a_store_cannot_hold_are_refused() {
        for epsilon in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(
                MicroEpsilon::from_epsilon(epsilon),
                Err(QuantityError::EpsilonNotPositive),
                "ε {epsilon}"
            );
        }
        assert_eq!(
            MicroEpsilon::from_epsilon(0.000_000_4),
            Err(QuantityError::EpsilonBelowResolution)
        );
        for delta in [1.0, -0.1, f64::NAN] {
            assert_eq!(
                PicoDelta::from_delta(delta),
                Err(QuantityError::DeltaOutOfRange),
                "δ {delta}"
            );
        }
        assert_eq!(
            QuantityError::EpsilonNotPositive.message("--epsilon"),
            "--epsilon must be a positive number"
        );
    }

    #[test]
    fn what_is_left_never_goes_below_zero() {
        assert_eq!(
            MicroEpsilon(1_000_000).left_after(MicroEpsilon(1_500_000)),
            MicroEpsilon::ZERO
        );
        assert_eq!(PicoDelta(10).left_after(PicoDelta(4)), PicoDelta(6));
        assert_eq!(
            MicroEpsilon(i64::MAX).saturating_add(MicroEpsilon(1)),
            MicroEpsilon(i64::MAX)
        );
    }
}
