//! WASM jobs end to end: example mappers built from `examples/wasm/` release products through
//! the gate; hostile mappers are refused, isolated, or absorbed without telling the operator.

use std::path::{Path, PathBuf};

use veil_gate::rules::Rule;
use veil_gate::sandbox::wasm::{WasmEngine, WasmLimits};
use veil_runtime::jobs::{self, JobOutcome};
use veil_runtime::templates::{self, ApprovalRequest, SpecRules, TemplateSpec};
use veil_runtime::{Error, metering};
use veil_sdk::columnar::{BatchView, BatchWriter};

use crate::support::{Fixture, OPERATOR};

const GUESTS: &str = veil_testkit::GUESTS_DIR;
const PENSION_TEMPLATE: &str = include_str!("../../examples/templates/pension_eligibility.toml");
const CREDIT_TEMPLATE: &str = include_str!("../../examples/templates/credit_risk.toml");

/// A template over the hostile mapper that loops for the unit `loop_unit` (until its deadline
/// or fuel ends) and traps for `trap_unit`.
const PROBE_TEMPLATE: &str = r#"
name = "probe"
sql = "SELECT COUNT(DISTINCT person_id) AS persons, SUM(one) AS ones FROM mapped"
[wasm]
module = "hostile_unit_trap.wasm"
input_sql = "SELECT person_id, :loop_unit AS loop_unit, :trap_unit AS trap_unit FROM social_insurance"
max_rows_per_unit = 1
fallback = "default"
[[wasm.output]]
name = "one"
type = "integer"
bounds = [0, 1]
default = 1
[[params]]
name = "loop_unit"
type = "integer"
[[params]]
name = "trap_unit"
type = "integer"
"#;

fn guest(name: &str) -> PathBuf {
    Path::new(GUESTS).join(format!("{name}.wasm"))
}

/// Parses a template file whose `module = "<name>.wasm"` is found in the guests folder.
fn template(text: &str) -> (TemplateSpec, Option<Vec<u8>>) {
    TemplateSpec::parse_file(text, Path::new(GUESTS)).expect("template parses")
}

fn approval(max_groups: u32, max_rows: u32) -> ApprovalRequest {
    ApprovalRequest {
        epsilon: 1.0,
        delta: 1e-6,
        k: 5,
        max_groups,
        max_rows,
        price_per_run_fen: 12_000,
        ..ApprovalRequest::default()
    }
}

/// Submits and approves; returns the template id.
fn approved(
    fixture: &mut Fixture,
    spec: TemplateSpec,
    module: Option<Vec<u8>>,
    a: ApprovalRequest,
) -> String {
    let submitted = templates::submit_with_module(&mut fixture.store, OPERATOR, spec, module)
        .expect("template accepted");
    templates::approve(&mut fixture.store, submitted.id.as_str(), a).expect("approved");
    submitted.id.to_string()
}

async fn run(fixture: &mut Fixture, template: &str, params: &[(&str, &str)]) -> JobOutcome {
    fixture.run(template, params).await.expect("the job ends")
}

#[tokio::test]
async fn the_example_mappers_release_products_through_the_gate() {
    let mut fixture = Fixture::new(3_000);
    let (spec, module) = template(PENSION_TEMPLATE);
    let pension = approved(&mut fixture, spec, module, approval(1, 1));
    let outcome = run(&mut fixture, &pension, &[("born_before", "1971")]).await;
    let JobOutcome::Released {
        rows: Some(rows),
        dir,
        ..
    } = outcome
    else {
        panic!("pension eligibility did not release: {outcome:?}");
    };
    // Every city is a public key of the declared output, so all 11 are released.
    assert_eq!(rows.num_rows(), 11);
    let names: Vec<String> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "city",
            "persons",
            "persons_ci_low",
            "persons_ci_high",
            "eligible",
            "eligible_ci_low",
            "eligible_ci_high",
            "avg_months_short",
            "avg_months_short_ci_low",
            "avg_months_short_ci_high"
        ]
    );
    let manifest = veil_sdk::manifest::verify_product_dir(&dir, None).expect("product verifies");
    assert_eq!(manifest.manifest.sources[0].name, "social_insurance");

    let (spec, module) = template(CREDIT_TEMPLATE);
    let credit = approved(&mut fixture, spec, module, approval(3, 3));
    let outcome = run(&mut fixture, &credit, &[]).await;
    assert!(
        matches!(outcome, JobOutcome::Released { .. }),
        "{outcome:?}"
    );
    let meter = metering::list(fixture.store.conn()).expect("meter");
    let last = meter.last().expect("a record");
    // Fuel is charged by the input table's size: the per-unit limit per row scanned.
    assert_eq!(
        last.fuel,
        WasmLimits::default().fuel_per_unit * last.rows_scanned
    );
    assert!(last.rows_scanned > 0);
}

/// The hostile mapper loops for one watched person and traps for another; the same job with
/// nobody watched is the baseline. What the operator sees must not differ.
#[tokio::test]
async fn a_unit_that_loops_or_traps_does_not_change_what_the_operator_sees() {
    let mut fixture = Fixture::new(3_000);
    let (spec, module) = template(PROBE_TEMPLATE);
    let id = approved(&mut fixture, spec, module, approval(1, 1));
    // Persons 7 and 8 exist: ids are 1, 2, 3, … in the demo data.
    let watched = run(&mut fixture, &id, &[("loop_unit", "7"), ("trap_unit", "8")]).await;
    let baseline = run(&mut fixture, &id, &[("loop_unit", "0"), ("trap_unit", "0")]).await;
    for outcome in [&watched, &baseline] {
        let JobOutcome::Released {
            rows: Some(rows), ..
        } = outcome
        else {
            panic!("the job must release whoever is in the data: {outcome:?}");
        };
        assert_eq!(rows.num_rows(), 1);
    }
    let meter = metering::list(fixture.store.conn()).expect("meter");
    let (a, b) = (&meter[meter.len() - 2], &meter[meter.len() - 1]);
    // Everything but time and memory (documented, data-dependent) is identical.
    assert_eq!(
        (
            &a.end_state,
            a.rows_scanned,
            a.bytes_scanned,
            a.fuel,
            a.micro_epsilon,
            a.output_rows,
            a.price
        ),
        (
            &b.end_state,
            b.rows_scanned,
            b.bytes_scanned,
            b.fuel,
            b.micro_epsilon,
            b.output_rows,
            b.price
        )
    );
    let (job_a, job_b) = (
        jobs::get(&fixture.store, a.job_id.as_str()).expect("job"),
        jobs::get(&fixture.store, b.job_id.as_str()).expect("job"),
    );
    assert_eq!(
        (job_a.reasons, job_a.failure),
        (job_b.reasons, job_b.failure)
    );
    // The host did see two failed units (the test would be empty otherwise) — and only the
    // bureau's audit entry says so.
    let fallbacks = |job: &str| -> i64 {
        fixture
            .store
            .conn()
            .query_row(
                "SELECT json_extract(details, '$.wasm.fallbacks') FROM audit
                 WHERE subject = ?1 AND kind = 'job.released'",
                [job],
                |row| row.get(0),
            )
            .expect("audit entry")
    };
    assert_eq!(fallbacks(&a.job_id), 2);
    assert_eq!(fallbacks(&b.job_id), 0);
}

/// The bureau's meter counts the job process's whole CPU time — the mapper's, the Parquet
/// decoding's and the fold's too — not only DataFusion's operators (which would leave a
/// looping unit's time out entirely).
#[tokio::test]
async fn the_meter_counts_the_cpu_time_of_the_whole_job() {
    let mut fixture = Fixture::new(3_000);
    let (spec, module) = template(PROBE_TEMPLATE);
    let looping = approved(
        &mut fixture,
        spec,
        module,
        ApprovalRequest {
            // Fuel enough that the looping unit runs to its deadline: 75% of the wall limit
            // over 3,000 rows is a slot of 300 ms.
            wasm_fuel_per_unit: 10_000_000_000,
            wall_seconds: 1_200,
            ..approval(1, 1)
        },
    );
    let outcome = run(
        &mut fixture,
        &looping,
        &[("loop_unit", "7"), ("trap_unit", "0")],
    )
    .await;
    assert!(
        matches!(outcome, JobOutcome::Released { .. }),
        "{outcome:?}"
    );
    let meter = metering::list(fixture.store.conn()).expect("meter");
    let last = meter.last().expect("a record");
    // The unit loops for most of 300 ms of wall time; even sharing two cores with the rest of
    // the test suite its thread gets a fifth of one.
    assert!(
        last.cpu_ms >= 60,
        "a unit looping for 300 ms shows only {} ms of CPU",
        last.cpu_ms
    );
}

/// With a tight wall limit, one unit that loops must not turn into the job's time-out: the
/// unit's deadline is cut so that every unit looping to it still fits, and a job whose tables
/// are too large for that is refused before ε is reserved, naming the approval to change.
#[tokio::test]
async fn one_looping_unit_cannot_time_out_a_job_with_a_tight_wall_limit() {
    let mut fixture = Fixture::new(300);
    let (spec, module) = template(PROBE_TEMPLATE);
    // A second of wall time and fuel for about as long: before, the looping unit's own
    // deadline (1 s) was the whole job's limit.
    let tight = ApprovalRequest {
        wall_seconds: 1,
        wasm_fuel_per_unit: 5_000_000_000,
        ..approval(1, 1)
    };
    let id = approved(&mut fixture, spec, module, tight);
    let mut seen = Vec::new();
    for params in [
        [("loop_unit", "7"), ("trap_unit", "0")],
        [("loop_unit", "0"), ("trap_unit", "0")],
    ] {
        let outcome = run(&mut fixture, &id, &params).await;
        let JobOutcome::Released {
            rows: Some(rows), ..
        } = &outcome
        else {
            panic!("the job must release whether or not person 7 loops: {outcome:?}");
        };
        seen.push(rows.num_rows());
    }
    assert_eq!(seen, [1, 1]);

    // The same template on many more rows cannot give every unit its shortest slot (150 µs:
    // a 100 µs deadline and the 50 µs tick that notices it) within 750 ms.
    let mut large = Fixture::new(40_000);
    let (spec, module) = template(PROBE_TEMPLATE);
    let id = approved(
        &mut large,
        spec,
        module,
        ApprovalRequest {
            wall_seconds: 1,
            ..approval(1, 1)
        },
    );
    let outcome = run(&mut large, &id, &[("loop_unit", "0"), ("trap_unit", "0")]).await;
    let JobOutcome::Rejected { refusal, .. } = &outcome else {
        panic!("a job that cannot fit its wall limit must be refused: {outcome:?}");
    };
    assert_eq!(refusal.codes(), [Rule::ResourcesLimit.code()]);
    let text = refusal.to_string();
    assert!(text.contains("--wall-seconds 8"), "{text}");
    let spent: i64 = large
        .store
        .conn()
        .query_row("SELECT COUNT(*) FROM budget_spend", [], |row| row.get(0))
        .expect("budget rows");
    assert_eq!(spent, 0, "a refusal before the run reserves no ε");
}

#[test]
fn a_mapper_cannot_carry_state_from_one_unit_to_the_next() {
    let bytes = std::fs::read(guest("hostile_state")).expect("guest built");
    let limits = WasmLimits::default();
    let mapper = WasmEngine::global()
        .expect("engine")
        .compile(&bytes, &limits)
        .expect("accepted");
    for person in [11_i64, 12, 13, 14] {
        let mut writer = BatchWriter::new(1);
        writer.int64("person_id", &[Some(person)]);
        let output = mapper
            .run_unit(&writer.finish(), &limits)
            .output
            .expect("output");
        let batch = BatchView::parse(&output).expect("a batch");
        // A reused instance would count 2, 3, … and remember 11, 12, ….
        assert_eq!(batch.column("calls").and_then(|c| c.int64(0)), Some(1));
        assert_eq!(
            batch.column("previous_unit").and_then(|c| c.int64(0)),
            Some(0)
        );
    }
}

#[test]
fn a_module_that_imports_wasi_is_refused_at_submission() {
    let mut fixture = Fixture::new(1_000);
    let module = wat::parse_str(
        r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "veil_alloc") (param i32) (result i32) (i32.const 0))
            (func (export "veil_map") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .expect("wat");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("m.wasm"), &module).expect("write");
    let text = PENSION_TEMPLATE.replace("pension_eligibility.wasm", "m.wasm");
    let (spec, bytes) = TemplateSpec::parse_file(&text, dir.path()).expect("parses");
    let refused = templates::submit_with_module(&mut fixture.store, OPERATOR, spec, bytes);
    let Err(Error::Refused(refusal)) = refused else {
        panic!("a WASI import must be refused: {refused:?}");
    };
    assert_eq!(refusal.violations[0].rule, Rule::WasmModule);
    assert!(
        refusal.violations[0]
            .message
            .contains("wasi_snapshot_preview1.fd_write")
    );
}

#[test]
fn a_declared_output_without_bounds_or_keys_is_refused_naming_the_column() {
    let mut fixture = Fixture::new(1_000);
    let text = PENSION_TEMPLATE.replace("bounds = [0, 180]\n", "");
    let (spec, module) = template(&text);
    let refused = templates::submit_with_module(&mut fixture.store, OPERATOR, spec, module);
    let Err(Error::Refused(refusal)) = refused else {
        panic!("an unbounded integer output must be refused: {refused:?}");
    };
    assert!(
        refusal
            .violations
            .iter()
            .any(|v| v.rule == Rule::WasmOutputSchema && v.message.contains("`months_short`"))
    );
}

#[tokio::test]
async fn an_input_without_the_unit_is_refused_before_any_row_is_read() {
    let mut fixture = Fixture::new(1_000);
    let text = PENSION_TEMPLATE.replace("SELECT person_id, city,", "SELECT city,");
    let (spec, module) = template(&text);
    let id = approved(&mut fixture, spec, module, approval(1, 1));
    let outcome = run(&mut fixture, &id, &[("born_before", "1971")]).await;
    let JobOutcome::Rejected { refusal, .. } = outcome else {
        panic!("expected a refusal: {outcome:?}");
    };
    assert_eq!(refusal.codes(), vec!["wasm.input"]);
    let meter = metering::list(fixture.store.conn()).expect("meter");
    assert_eq!(
        meter.last().map(|m| (m.micro_epsilon.0, m.rows_scanned)),
        Some((0, 0))
    );
}

/// A mapper that answers 10⁹ for a column declared with bounds [0, 1]: the host clamps it
/// before the gate ever sees it, so the released sum stays near the unit count.
#[tokio::test]
async fn output_out_of_its_bounds_is_clamped_before_the_gate() {
    let mut fixture = Fixture::new(2_000);
    let mut writer = BatchWriter::new(1);
    writer.int64("eligible", &[Some(1_000_000_000)]);
    let answer = writer.finish();
    let escaped: String = answer.iter().map(|b| format!("\\{b:02x}")).collect();
    let module = wat::parse_str(format!(
        r#"(module
            (memory (export "memory") 1)
            (data (i32.const 4096) "{escaped}")
            (func (export "veil_alloc") (param i32) (result i32) (i32.const 8192))
            (func (export "veil_map") (param i32 i32) (result i64)
                (i64.or (i64.shl (i64.const 4096) (i64.const 32)) (i64.const {len}))))"#,
        len = answer.len()
    ))
    .expect("wat");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("liar.wasm"), &module).expect("write");
    let text = r#"
name = "liar"
sql = "SELECT COUNT(DISTINCT person_id) AS persons, SUM(eligible) AS eligible FROM mapped"
[wasm]
module = "liar.wasm"
input_sql = "SELECT person_id FROM social_insurance"
max_rows_per_unit = 1
[[wasm.output]]
name = "eligible"
type = "integer"
bounds = [0, 1]
"#;
    let (spec, bytes) = TemplateSpec::parse_file(text, dir.path()).expect("parses");
    let id = approved(&mut fixture, spec, bytes, approval(1, 1));
    let outcome = run(&mut fixture, &id, &[]).await;
    let JobOutcome::Released {
        rows: Some(rows), ..
    } = outcome
    else {
        panic!("expected a release: {outcome:?}");
    };
    let value = |name: &str| -> f64 {
        let column = rows.column_by_name(name).expect("column");
        let column = datafusion::arrow::compute::cast(
            column,
            &datafusion::arrow::datatypes::DataType::Float64,
        )
        .expect("numeric");
        column
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Float64Array>()
            .expect("f64")
            .value(0)
    };
    let (persons, eligible) = (value("persons"), value("eligible"));
    // Unclamped, the sum would be about 10⁹ per person; clamped, it is one per person plus
    // Laplace noise of scale 2 (ε 0.5, sensitivity 1).
    assert!(persons > 500.0, "{persons}");
    assert!(
        (eligible - persons).abs() < 100.0,
        "persons {persons}, eligible {eligible}"
    );
}

/// The bureau pins the mapper's fuel per unit: with too little, every unit falls back, the
/// job still releases, and the meter charges the pinned fuel.
#[tokio::test]
async fn the_bureau_pins_the_fuel_per_unit() {
    let mut fixture = Fixture::new(2_000);
    let (spec, module) = template(PENSION_TEMPLATE);
    let starved = ApprovalRequest {
        wasm_fuel_per_unit: 50,
        ..approval(1, 1)
    };
    let id = approved(&mut fixture, spec, module, starved);
    let outcome = run(&mut fixture, &id, &[("born_before", "1971")]).await;
    assert!(
        matches!(outcome, JobOutcome::Released { .. }),
        "{outcome:?}"
    );
    let meter = metering::list(fixture.store.conn()).expect("meter");
    let last = meter.last().expect("a record");
    assert_eq!(last.fuel, 50 * last.rows_scanned);
    let (units, fallbacks): (i64, i64) = fixture
        .store
        .conn()
        .query_row(
            "SELECT json_extract(details, '$.wasm.units'), json_extract(details, '$.wasm.fallbacks')
             FROM audit WHERE subject = ?1 AND kind = 'job.released'",
            [&last.job_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .expect("audit entry");
    assert!(units > 0);
    assert_eq!(fallbacks, units, "50 fuel cannot map anyone");
    let refused = templates::approve(
        &mut fixture.store,
        &id,
        ApprovalRequest {
            wasm_memory_mib: 100_000,
            ..approval(1, 1)
        },
    );
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("--wasm-memory-mib")),
        "{refused:?}"
    );
}
