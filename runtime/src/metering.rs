//! Metering: one record per job, whatever its end (released, rejected, failed).
//!
//! CPU, rows and bytes scanned and peak memory come from DataFusion's own execution metrics
//! and the sandbox's memory pool (`veil_gate::sandbox::ExecStats`), not from estimates. Because the
//! sandbox turns Parquet pruning off, rows and bytes scanned depend on the tables read, never
//! on values inside them. Wall and CPU time do depend on the data; they are kept for the
//! bureau's billing and capacity planning.
//!
//! `fuel` (WASM jobs) is the fuel the job was allowed: the per-unit fuel limit times the rows
//! the mapper's input scan read (an upper bound on its units). Like rows scanned it depends on
//! the tables only, so it reveals neither how many units the input held nor whether one of
//! them looped or trapped; the fuel actually burned stays in the job's audit entry, for the
//! bureau.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ids::Fen;

/// One job's meter record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterRecord {
    pub job_id: String,
    pub operator: String,
    pub template_id: String,
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub rows_scanned: u64,
    pub bytes_scanned: u64,
    pub peak_memory_bytes: u64,
    pub micro_epsilon: i64,
    pub pico_delta: i64,
    pub output_rows: u64,
    pub output_bytes: u64,
    pub end_state: String,
    pub price: Fen,
    pub at: String,
    /// WASM jobs: the fuel charged (see the module docs); 0 for SQL jobs.
    #[serde(default)]
    pub fuel: u64,
}

impl MeterRecord {
    /// The record of a job that ended without running (cancelled while queued, or failed by a
    /// restart): no resources used, nothing charged, ε as reserved.
    pub fn idle(
        job_id: &str,
        operator: &str,
        template_id: &str,
        end_state: &str,
        (micro_epsilon, pico_delta): (i64, i64),
        at: &str,
    ) -> Self {
        Self {
            job_id: job_id.to_string(),
            operator: operator.to_string(),
            template_id: template_id.to_string(),
            wall_ms: 0,
            cpu_ms: 0,
            rows_scanned: 0,
            bytes_scanned: 0,
            peak_memory_bytes: 0,
            micro_epsilon,
            pico_delta,
            output_rows: 0,
            output_bytes: 0,
            end_state: end_state.to_string(),
            price: Fen(0),
            at: at.to_string(),
            fuel: 0,
        }
    }
}

/// Inserts a record inside the caller's transaction.
pub fn record(tx: &Connection, m: &MeterRecord) -> Result<()> {
    tx.execute(
        "INSERT INTO meter (job_id, operator, template_id, wall_ms, cpu_ms, rows_scanned,
            bytes_scanned, peak_memory_bytes, micro_epsilon, pico_delta, output_rows,
            output_bytes, end_state, price_fen, at, fuel)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            m.job_id,
            m.operator,
            m.template_id,
            m.wall_ms as i64,
            m.cpu_ms as i64,
            m.rows_scanned as i64,
            m.bytes_scanned as i64,
            m.peak_memory_bytes as i64,
            m.micro_epsilon,
            m.pico_delta,
            m.output_rows as i64,
            m.output_bytes as i64,
            m.end_state,
            m.price.0,
            m.at,
            m.fuel as i64
        ],
    )?;
    Ok(())
}

/// All meter records, oldest first.
pub fn list(conn: &Connection) -> Result<Vec<MeterRecord>> {
    let mut statement = conn.prepare(
        "SELECT job_id, operator, template_id, wall_ms, cpu_ms, rows_scanned, bytes_scanned,
            peak_memory_bytes, micro_epsilon, pico_delta, output_rows, output_bytes, end_state,
            price_fen, at, fuel FROM meter ORDER BY at, rowid",
    )?;
    let rows = statement.query_map([], |row| {
        Ok(MeterRecord {
            job_id: row.get(0)?,
            operator: row.get(1)?,
            template_id: row.get(2)?,
            wall_ms: row.get::<_, i64>(3)? as u64,
            cpu_ms: row.get::<_, i64>(4)? as u64,
            rows_scanned: row.get::<_, i64>(5)? as u64,
            bytes_scanned: row.get::<_, i64>(6)? as u64,
            peak_memory_bytes: row.get::<_, i64>(7)? as u64,
            micro_epsilon: row.get(8)?,
            pico_delta: row.get(9)?,
            output_rows: row.get::<_, i64>(10)? as u64,
            output_bytes: row.get::<_, i64>(11)? as u64,
            end_state: row.get(12)?,
            price: Fen(row.get(13)?),
            at: row.get(14)?,
            fuel: row.get::<_, i64>(15)? as u64,
        })
    })?;
    let mut records = Vec::new();
    for row in rows {
        records.push(row?);
    }
    Ok(records)
}
