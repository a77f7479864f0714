//! Metering: one record per job, whatever its end (released, rejected, failed).
//!
//! Rows and bytes scanned and peak memory come from DataFusion's own execution metrics and the
//! sandbox's memory pool (`veil_gate::sandbox::ExecStats`), CPU time from the job's child
//! process's CPU clock (all its threads), not from estimates. Because the
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
use veil_gate::terms::{MicroEpsilon, PicoDelta};

/// How a metered job ended. Stored in `meter.end_state`, and serialized, as its lowercase
/// name; a job's own state (`jobs::JobState`) adds the two states before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndState {
    /// The gate released a product (or an identical earlier job's product was returned).
    Released,
    /// A rule refused the job; the refusal names the rules.
    Rejected,
    /// The job could not run to its end.
    Failed,
    /// The operator or the bureau cancelled the job.
    Cancelled,
}

stored_state!(EndState, "meter.end_state", {
    Released => "released",
    Rejected => "rejected",
    Failed => "failed",
    Cancelled => "cancelled",
});
use crate::store::{WriteTx, query_parsed_rows, stored_state};

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
    pub micro_epsilon: MicroEpsilon,
    pub pico_delta: PicoDelta,
    pub output_rows: u64,
    pub output_bytes: u64,
    pub end_state: EndState,
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
        end_state: EndState,
        (micro_epsilon, pico_delta): (MicroEpsilon, PicoDelta),
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
            end_state,
            price: Fen(0),
            at: at.to_string(),
            fuel: 0,
        }
    }
}

/// Inserts a record inside the caller's transaction.
pub fn record(tx: &WriteTx<'_>, m: &MeterRecord) -> Result<()> {
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
            m.micro_epsilon.0,
            m.pico_delta.0,
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

/// The price job `job_id`'s meter record charged, in fen; an error if it has none.
pub fn price_of_job(conn: &Connection, job_id: &str) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT price_fen FROM meter WHERE job_id = ?1",
        [job_id],
        |row| row.get(0),
    )?)
}

/// All meter records, oldest first.
pub fn list(conn: &Connection) -> Result<Vec<MeterRecord>> {
    query_parsed_rows(
        conn,
        "SELECT job_id, operator, template_id, wall_ms, cpu_ms, rows_scanned, bytes_scanned,
            peak_memory_bytes, micro_epsilon, pico_delta, output_rows, output_bytes, end_state,
            price_fen, at, fuel FROM meter ORDER BY at, rowid",
        [],
        |row| {
            // A stored end state outside `EndState` is reported naming its column, rather than as
            // SQLite's conversion error.
            let end_state = match EndState::from_stored(&row.get::<_, String>(12)?) {
                Ok(end_state) => end_state,
                Err(error) => return Ok(Err(error)),
            };
            Ok(Ok(MeterRecord {
                job_id: row.get(0)?,
                operator: row.get(1)?,
                template_id: row.get(2)?,
                wall_ms: row.get::<_, i64>(3)? as u64,
                cpu_ms: row.get::<_, i64>(4)? as u64,
                rows_scanned: row.get::<_, i64>(5)? as u64,
                bytes_scanned: row.get::<_, i64>(6)? as u64,
                peak_memory_bytes: row.get::<_, i64>(7)? as u64,
                micro_epsilon: MicroEpsilon(row.get(8)?),
                pico_delta: PicoDelta(row.get(9)?),
                output_rows: row.get::<_, i64>(10)? as u64,
                output_bytes: row.get::<_, i64>(11)? as u64,
                end_state,
                price: Fen(row.get(13)?),
                at: row.get(14)?,
                fuel: row.get::<_, i64>(15)? as u64,
            }))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::store::Store;

    fn record(end_state: EndState) -> MeterRecord {
        MeterRecord::idle(
            "job-1",
            "op",
            "tpl-1",
            end_state,
            (MicroEpsilon(500_000), PicoDelta(1_000_000)),
            "2026-11-23T10:00:00Z",
        )
    }

    #[test]
    fn a_meter_record_reads_back_with_its_end_state_and_quantities() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::init(&dir.path().join("store")).expect("store");
        store
            .write(|tx| super::record(tx, &record(EndState::Failed)))
            .expect("recorded");
        assert_eq!(
            list(store.conn()).expect("list"),
            vec![record(EndState::Failed)]
        );
        // The stored text and the JSON form are the state's lowercase name, as they were
        // before the enum.
        let stored: String = store
            .conn()
            .query_row("SELECT end_state FROM meter", [], |row| row.get(0))
            .expect("stored");
        assert_eq!(stored, "failed");
        let json = serde_json::to_value(record(EndState::Failed)).expect("json");
        assert_eq!(
            (
                &json["end_state"],
                &json["micro_epsilon"],
                &json["pico_delta"]
            ),
            (
                &serde_json::json!("failed"),
                &serde_json::json!(500_000),
                &serde_json::json!(1_000_000)
            )
        );
    }

    #[test]
    fn a_stored_end_state_outside_the_enum_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::init(&dir.path().join("store")).expect("store");
        store
            .write(|tx| super::record(tx, &record(EndState::Released)))
            .expect("recorded");
        store
            .conn()
            .execute("UPDATE meter SET end_state = 'refunded'", [])
            .expect("update");
        let error = list(store.conn()).expect_err("an unknown end state");
        let message = error.to_string();
        assert!(matches!(error, Error::Internal(_)), "{message}");
        assert!(
            message.contains("meter.end_state")
                && message.contains("\"refunded\"")
                && message.contains("released, rejected, failed, cancelled"),
            "{message}"
        );
    }
}
