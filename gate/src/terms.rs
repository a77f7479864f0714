//! The privacy and resource terms the bureau pins when it approves a template: what one run
//! may spend (ε, δ), how many units a released group needs (k), how much one unit may
//! contribute (groups, rows), and the run's resource limits.
//!
//! The domain's approval record holds these terms beside its price; the kernel reads only
//! these.

use serde::{Deserialize, Serialize};

use crate::sandbox::SandboxLimits;
use crate::sandbox::wasm::WasmLimits;

/// Millionths of ε per unit: ε is stored and summed as an integer count of millionths.
pub const MICRO: f64 = 1_000_000.0;
/// Trillionths of δ per unit: δ is stored and summed as an integer count of trillionths.
pub const PICO: f64 = 1_000_000_000_000.0;

/// One approved run's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    /// ε spent by one run, in millionths.
    pub micro_epsilon: i64,
    /// δ spent by one run, in trillionths.
    pub pico_delta: i64,
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
        self.micro_epsilon as f64 / MICRO
    }

    /// δ of one run.
    pub fn delta(&self) -> f64 {
        self.pico_delta as f64 / PICO
    }
}
