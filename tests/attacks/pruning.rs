//! The operator's meter is not an oracle (issue 9, defect 8): `citizens` is written sorted by
//! birth year in small row groups, so Parquet statistics could skip every row group a filter
//! on birth year excludes. Runs of one template whose parameter selects different row groups
//! — some, all, or none — must show the same rows and bytes scanned, fuel and price.

use std::time::Duration;

use serde_json::{Value, json};

use crate::canary::{self, Domain, assert_clean};
use crate::kill::wasm_template;
use crate::server::{Http, Server, submit_template};

/// A mapper that traps at once: every unit contributes the declared default, cheaply.
const TRAPPING_MAPPER: &str = r#"(module
    (memory (export "memory") 1)
    (func (export "veil_alloc") (param i32) (result i32) (i32.const 8192))
    (func (export "veil_map") (param i32 i32) (result i64) unreachable))"#;

/// Birth-year thresholds: some row groups, every row group, no row group.
const BORN: [i64; 3] = [2000, 1900, 2100];

/// What the operator's meter says about a job, minus what may differ between runs.
fn charged(record: &Value) -> Value {
    json!({
        "rows_scanned": record["rows_scanned"],
        "bytes_scanned": record["bytes_scanned"],
        "fuel": record["fuel"],
        "price_fen": record["price_fen"],
        "micro_epsilon": record["micro_epsilon"],
        "end_state": record["end_state"],
    })
}

async fn run_and_meter(operator: &Http, template: &str, born: i64) -> (Value, Value) {
    let answer = operator
        .post(
            "/jobs",
            &json!({ "template": template, "params": { "born": born.to_string() } }),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer.json()["job"]["id"]
        .as_str()
        .expect("a job id")
        .to_string();
    let job = operator.wait_job(&id, Duration::from_secs(120)).await;
    let meter = operator.get("/meter").await.ok("meter");
    assert_clean("the operator's meter", meter.body.as_bytes());
    let record = meter
        .json()
        .as_array()
        .expect("a meter list")
        .iter()
        .find(|m| m["job_id"] == id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no meter record for {id}"));
    (job, record)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_meter_is_the_same_whichever_row_groups_a_filter_selects() {
    let domain = Domain::new();
    // The file really is laid out for pruning: several row groups with disjoint birth years,
    // some but not all holding persons born in 2000 or later, none born in 2100 or later.
    let groups = canary::row_group_birth_years(&domain.raw().join("citizens.parquet"));
    assert!(groups.len() >= 8, "{groups:?}");
    let selected = |born: i64| {
        groups
            .iter()
            .filter(|(_, max)| i64::from(*max) >= born)
            .count()
    };
    assert!(
        selected(BORN[0]) > 0 && selected(BORN[0]) < groups.len(),
        "{groups:?}"
    );
    assert_eq!(selected(BORN[1]), groups.len());
    assert_eq!(selected(BORN[2]), 0);

    let server = Server::start(&domain.root(), 2);
    let operator = Http::new(&server, &domain.keys.operator);
    let bureau = Http::new(&server, &domain.keys.bureau);
    let params = [("born".to_string(), "2000".to_string())];
    let sql_template = submit_template(
        &operator,
        "born-since",
        "SELECT city, COUNT(DISTINCT person_id) AS persons, SUM(monthly_income) AS income \
         FROM citizens WHERE birth_year >= :born GROUP BY city",
        &params,
    )
    .await
    .expect("a template");
    bureau
        .post(
            &format!("/templates/{sql_template}/approve"),
            &json!({ "epsilon": 0.5, "k": 5, "max_groups": 1, "max_rows": 3,
                     "price_per_run_fen": 100 }),
        )
        .await
        .ok("approving");
    let module = wat::parse_str(TRAPPING_MAPPER).expect("wat");
    let wasm_template = wasm_template(
        &domain,
        &server,
        "born-since-mapped",
        &module,
        "SELECT person_id FROM citizens WHERE birth_year >= :born",
        &[("born", "2000")],
        1_000_000,
    )
    .await;

    for (kind, template) in [("SQL", &sql_template), ("WASM", &wasm_template)] {
        // The pre-flight, before any run (afterwards it would offer the earlier product),
        // charges the whole table whatever the parameter.
        let mut prices = Vec::new();
        for born in BORN {
            let dry = operator
                .post(
                    "/jobs/dry-run",
                    &json!({ "template": template, "params": { "born": born.to_string() } }),
                )
                .await
                .ok("dry run")
                .json();
            assert_eq!(dry["rows_scanned"], json!(domain.citizens_rows), "{dry}");
            prices.push(dry["price_fen"].clone());
        }
        assert!(prices.iter().all(|p| p == &prices[0]), "{kind}: {prices:?}");
        let mut seen: Vec<(i64, Value)> = Vec::new();
        for born in BORN {
            let (job, record) = run_and_meter(&operator, template, born).await;
            assert_eq!(job["state"], "released", "{kind} born >= {born}: {job}");
            assert_eq!(
                record["rows_scanned"],
                json!(domain.citizens_rows),
                "{kind} born >= {born}: the meter charges the whole table: {record}"
            );
            assert_eq!(
                record["price_fen"], prices[0],
                "{kind}: the pre-flight's price"
            );
            seen.push((born, charged(&record)));
        }
        for (born, record) in &seen[1..] {
            assert_eq!(
                record, &seen[0].1,
                "{kind}: the meter for born >= {born} differs from born >= {}",
                seen[0].0
            );
        }
    }
    let log = server.stop();
    assert_clean("the server's output", &log);
}
