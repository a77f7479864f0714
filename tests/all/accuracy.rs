//! What a product's users can tell about its figures, as they would see it: each numeric cell
//! with its 95 % interval in the Parquet and CSV files, the accuracy stated in the signed
//! manifest, and a Gaussian template that spends exactly the ε the bureau approved.

use std::fs::File;
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use veil_gate::terms::Mechanism;
use veil_runtime::budget::{self, Period};
use veil_runtime::jobs::JobOutcome;
use veil_runtime::templates::ApprovalRequest;
use veil_sdk::manifest::{MANIFEST_FILE, SignedManifest};

use crate::support::{self, Fixture};

const INCOME_SQL: &str = "SELECT city, gender, COUNT(DISTINCT person_id) AS persons, \
    COUNT(*) AS records, SUM(monthly_income) AS total, AVG(monthly_income) AS avg_income \
    FROM social_insurance WHERE year = :year GROUP BY city, gender";

/// Runs `veil` with `args` and insists on exit code 0.
fn veil_ok(args: &[&str]) -> support::Run {
    let output = std::process::Command::new(support::veil_bin())
        .env_remove("VEIL_DATA_DIR")
        .args(args)
        .output()
        .expect("run veil");
    let run = support::Run::from(output);
    assert_eq!(run.code, Some(0), "{run}");
    run
}

fn released_dir(outcome: &JobOutcome) -> &Path {
    match outcome {
        JobOutcome::Released { dir, .. } => dir,
        other => panic!("expected a released product, got {other:?}"),
    }
}

fn manifest_of(dir: &Path) -> SignedManifest {
    let bytes = std::fs::read(dir.join(MANIFEST_FILE)).expect("manifest.json");
    serde_json::from_slice(&bytes).expect("a signed manifest")
}

fn parquet_of(dir: &Path) -> RecordBatch {
    let file = File::open(dir.join("result.parquet")).expect("result.parquet");
    let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("a Parquet file")
        .build()
        .expect("a reader")
        .collect::<Result<_, _>>()
        .expect("rows");
    datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("one batch")
}

/// A numeric column as floats, NULL as `None`.
fn floats(batch: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    let column = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("the product has no `{name}`: {:?}", batch.schema()));
    match column.data_type() {
        DataType::Int64 => column
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(|v| v as f64))
            .collect(),
        DataType::Float64 => column.as_primitive::<Float64Type>().iter().collect(),
        other => panic!("`{name}` is {other}"),
    }
}

/// Every measure column of `batch` is followed by its interval, which holds the value, and is
/// NULL exactly where the value is.
fn assert_every_cell_has_its_interval(batch: &RecordBatch, measures: &[&str]) {
    let names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for measure in measures {
        let at = names
            .iter()
            .position(|n| n == measure)
            .unwrap_or_else(|| panic!("no `{measure}` in {names:?}"));
        assert_eq!(names[at + 1], format!("{measure}_ci_low"), "{names:?}");
        assert_eq!(names[at + 2], format!("{measure}_ci_high"), "{names:?}");
        let values = floats(batch, measure);
        let low = floats(batch, &format!("{measure}_ci_low"));
        let high = floats(batch, &format!("{measure}_ci_high"));
        for row in 0..values.len() {
            match (values[row], low[row], high[row]) {
                (Some(v), Some(l), Some(h)) => {
                    assert!(l <= v && v <= h, "`{measure}` row {row}: {l} ≤ {v} ≤ {h}")
                }
                (None, None, None) => {}
                other => {
                    panic!("`{measure}` row {row}: a value and its interval disagree: {other:?}")
                }
            }
        }
    }
}

#[tokio::test]
async fn every_numeric_cell_comes_with_its_interval_and_the_manifest_states_the_accuracy() {
    let mut fixture = Fixture::new(3_000);
    let outcome = fixture
        .run_sql(INCOME_SQL, &[("year", "2024")], support::approval())
        .await
        .expect("job");
    let dir = released_dir(&outcome);
    let batch = parquet_of(dir);
    assert!(batch.num_rows() > 0);
    let measures = ["persons", "records", "total", "avg_income"];
    assert_every_cell_has_its_interval(&batch, &measures);
    // Post-processing: counts are never negative, averages stay inside the bounds
    // ([0, 100000] in the test policy), and so do their intervals.
    for row in floats(&batch, "persons_ci_low").into_iter().flatten() {
        assert!(row >= 0.0);
    }
    for name in ["avg_income", "avg_income_ci_low", "avg_income_ci_high"] {
        for value in floats(&batch, name).into_iter().flatten() {
            assert!((0.0..=100_000.0).contains(&value), "{name}: {value}");
        }
    }

    // The CSV has the same columns, in the same order.
    let csv = std::fs::read_to_string(dir.join("result.csv")).expect("result.csv");
    let header = csv.lines().next().expect("a header");
    assert_eq!(
        header,
        "city,gender,persons,persons_ci_low,persons_ci_high,records,records_ci_low,records_ci_high,total,total_ci_low,total_ci_high,avg_income,avg_income_ci_low,avg_income_ci_high"
    );

    let privacy = manifest_of(dir).manifest.privacy;
    let stated: Vec<(&str, &str)> = privacy
        .accuracy
        .iter()
        .map(|a| (a.column.as_str(), a.kind.as_str()))
        .collect();
    assert_eq!(
        stated,
        [
            ("persons", "count"),
            ("records", "count"),
            ("total", "sum"),
            ("avg_income", "average")
        ]
    );
    assert!(
        privacy
            .accuracy
            .iter()
            .all(|a| a.confidence == 0.95 && a.error > 0.0)
    );
    // Every draw states its mechanism, α and half-width.
    for scale in &privacy.noise_scales {
        assert!(
            scale
                .mechanism
                .as_deref()
                .is_some_and(|m| m.contains("Laplace")),
            "{scale:?}"
        );
        assert_eq!(scale.alpha, Some(0.05));
        assert!(scale.half_width.is_some(), "{scale:?}");
    }
    assert!(
        privacy
            .post_processing
            .as_deref()
            .is_some_and(|p| p.contains("averages kept inside")),
        "{privacy:?}"
    );
    assert!(privacy.contributions_dropped.is_some(), "{privacy:?}");
    // A count's interval is its draw's half-width around the value.
    let half = privacy.accuracy[0].error;
    let persons = floats(&batch, "persons");
    let high = floats(&batch, "persons_ci_high");
    for (v, h) in persons.iter().zip(&high) {
        if let (Some(v), Some(h)) = (v, h) {
            assert_eq!(h - v, half);
        }
    }
}

#[tokio::test]
async fn a_gaussian_template_spends_the_approved_epsilon_as_opendps_zcdp_conversion_states() {
    let mut fixture = Fixture::new(3_000);
    let approval = ApprovalRequest {
        epsilon: 0.7,
        delta: 1e-6,
        mechanism: Mechanism::Gaussian,
        ..support::approval()
    };
    let outcome = fixture
        .run_sql(INCOME_SQL, &[("year", "2024")], approval)
        .await
        .expect("job");
    let dir = released_dir(&outcome);
    assert_every_cell_has_its_interval(&parquet_of(dir), &["persons", "avg_income"]);
    let privacy = manifest_of(dir).manifest.privacy;
    assert!(
        privacy.mechanism.starts_with("gaussian"),
        "{}",
        privacy.mechanism
    );
    let accounting = privacy
        .accounting
        .expect("a zCDP release states its accounting");
    assert_eq!(accounting.measure, "zCDP");
    let shares: f64 = privacy.noise_scales.iter().filter_map(|s| s.rho).sum();
    assert!(shares <= accounting.rho && shares >= accounting.rho * 0.999);
    assert!(privacy.noise_scales.iter().all(|s| s.epsilon == 0.0));
    // OpenDP's conversion of the release's ρ gives the approved ε (to the search's precision),
    // never more.
    let epsilon = veil_gate::noise::epsilon_of_rho(accounting.rho, 1e-6).expect("conversion");
    assert!(
        (0.7 * (1.0 - 1e-6)..=0.7 * (1.0 + 1e-9)).contains(&epsilon),
        "{epsilon}"
    );
    assert_eq!(accounting.epsilon, epsilon);

    // The grant's ledger keeps ε, in the unit the bureau set: exactly the approved ε.
    let spent = budget::spent_by_grant(
        fixture.store.conn(),
        fixture.grant.id.as_str(),
        &Period::of(veil_runtime::clock::now()),
    )
    .expect("spent");
    assert_eq!(spent.micro_epsilon.0, 700_000);
}

/// A grouping that puts one person in several groups (several years each) under the
/// default `max_groups = 1`: the bureau is warned at approval with the value the registration
/// report supports, the operator at pre-flight without any figure from the data, and the
/// manifest counts, with noise, the persons whose contributions were dropped.
#[tokio::test]
async fn a_grouping_beyond_max_groups_warns_before_and_is_counted_after() {
    let mut fixture = Fixture::new(3_000);
    let sql = "SELECT year, city, COUNT(DISTINCT person_id) AS persons FROM social_insurance \
               GROUP BY year, city";
    let spec = veil_sdk::template::TemplateSpec {
        name: "persons_by_year_and_city".into(),
        sql: sql.into(),
        params: Vec::new(),
        wasm: None,
        versions: Default::default(),
    };
    let template = veil_runtime::templates::submit(&mut fixture.store, support::OPERATOR, spec)
        .expect("submitted");
    let id = template.id.to_string();
    let store = fixture.store_path();
    let store = store.to_str().expect("a UTF-8 path");

    // The bureau, choosing: the warning names the columns and suggests a --max-groups.
    let preview = veil_ok(&[
        "template",
        "approve",
        &id,
        "--epsilon",
        "1",
        "--preview",
        "--data-dir",
        store,
    ]);
    assert!(preview.stdout.contains("accuracy at 95 %"), "{preview}");
    let warning = preview
        .stdout
        .lines()
        .find(|l| l.contains("--max-groups"))
        .unwrap_or_else(|| panic!("no --max-groups warning: {preview}"));
    assert!(warning.contains("year"), "{warning}");
    let approved = veil_ok(&[
        "template",
        "approve",
        &id,
        "--epsilon",
        "1",
        "--data-dir",
        store,
    ]);
    assert!(approved.stdout.contains("--max-groups"), "{approved}");

    // The operator's pre-flight warns too, but quotes no figure computed from the data.
    let check = veil_ok(&[
        "job",
        "check",
        "--operator",
        support::OPERATOR,
        "--template",
        &id,
        "--json",
        "--data-dir",
        store,
    ]);
    let check: serde_json::Value = serde_json::from_str(&check.stdout).expect("JSON");
    let warnings: Vec<&str> = check["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w.as_str())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("year") && w.contains("max_groups")),
        "{check:#}"
    );
    assert!(
        warnings.iter().all(|w| !w.contains("99")),
        "an operator's warning quotes a figure from the data: {warnings:?}"
    );

    // After the run, the buyer reads how many persons lost contributions: with three years
    // each and one group kept, nearly all of them.
    let outcome = fixture.run(&id, &[]).await.expect("job");
    let privacy = manifest_of(released_dir(&outcome)).manifest.privacy;
    let dropped = privacy
        .contributions_dropped
        .expect("the manifest counts the persons cut");
    assert!(
        dropped.units_noisy > 500,
        "most persons have several years, one was kept: {dropped:?}"
    );
}
