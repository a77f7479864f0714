//! Statistical disclosure rules beyond k, as a buyer sees them: in an enterprise registry, a
//! cell of registered capital that one enterprise dominates is withheld by the p % rule (its
//! sum and interval NULL, the manifest counting it), while a cell of many similar
//! enterprises is released.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use veil_runtime::jobs::JobOutcome;
use veil_runtime::templates::ApprovalRequest;
use veil_sdk::manifest::{MANIFEST_FILE, SignedManifest};

use crate::support;

/// The registry's policy: capital bounded to [0, 5000] (10,000 yuan), with the p % rule and
/// the (2, 90) dominance rule, as in `examples/policies/enterprise_registry.toml`.
const POLICY: &str = r#"
provider = "Test Administration for Market Regulation"
classification_level = 3
sharing = "conditional"
acquired_on = "2026-10-31"
privacy_unit = "legal_rep_id"
unit_kind = "person"
[columns.legal_rep_id]
role = "identifier"
[columns.industry]
role = "quasi"
keys = ["mining", "retail"]
[columns.registered_capital]
role = "sensitive"
bounds = [0, 5000]
p_percent = 10
dominance = [2, 90]
"#;

/// Mining: one enterprise with 5,000 and 40 with 10 each (the largest holds 93 % of the cell;
/// the second-largest could estimate it to within 1 %). Retail: 3,000 enterprises of 100 each.
fn write_registry(path: &Path) {
    let mut rep = Vec::new();
    let mut industry = Vec::new();
    let mut capital = Vec::new();
    let mut add = |sector: &'static str, amount: i64| {
        rep.push(rep.len() as i64);
        industry.push(sector);
        capital.push(amount);
    };
    add("mining", 5_000);
    for _ in 0..40 {
        add("mining", 10);
    }
    for _ in 0..3_000 {
        add("retail", 100);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("legal_rep_id", DataType::Int64, false),
        Field::new("industry", DataType::Utf8, false),
        Field::new("registered_capital", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(rep)),
            Arc::new(StringArray::from(industry)),
            Arc::new(Int64Array::from(capital)),
        ],
    )
    .expect("batch");
    let mut writer =
        ArrowWriter::try_new(File::create(path).expect("file"), schema, None).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
}

#[tokio::test]
async fn the_p_percent_rule_withholds_a_cell_one_enterprise_dominates() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let file = dir.path().join("registry.parquet");
    write_registry(&file);
    let mut store = support::store_with_dataset(dir.path(), "enterprise_registry", &file, POLICY);
    let template = support::submit_and_approve(
        &mut store,
        "SELECT industry, COUNT(DISTINCT legal_rep_id) AS firms, \
         SUM(registered_capital) AS capital FROM enterprise_registry GROUP BY industry",
        &[],
        ApprovalRequest {
            epsilon: 2.0,
            k: 5,
            ..ApprovalRequest::default()
        },
    )
    .expect("template");
    // Seeded noise: the outcome is the same on every run of the test. Each seed is one draw
    // of the release; at each, the dominated cell is withheld (it would be missed with
    // probability at most 5 %) and the even one released.
    for seed in [3, 11, 29] {
        store.seed_test_noise(seed);
        let outcome = support::run_template(&mut store, &template, &[])
            .await
            .expect("job");
        let JobOutcome::Released { dir, .. } = &outcome else {
            panic!("expected a release, got {outcome:?}");
        };
        let batch = {
            let file = File::open(dir.join("result.parquet")).expect("result.parquet");
            let mut reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .expect("parquet")
                .build()
                .expect("reader");
            reader.next().expect("a batch").expect("rows")
        };
        let industries = batch.column_by_name("industry").expect("industry");
        let industries =
            datafusion::arrow::compute::cast(industries, &DataType::Utf8).expect("as text");
        let industries = industries.as_string::<i32>();
        let row = |name: &str| {
            (0..batch.num_rows())
                .find(|i| industries.value(*i) == name)
                .unwrap_or_else(|| panic!("`{name}` is a public key: always a row"))
        };
        let capital = batch.column_by_name("capital").expect("capital");
        let capital = capital.as_primitive::<Int64Type>();
        let low = batch.column_by_name("capital_ci_low").expect("low");
        let firms = batch.column_by_name("firms").expect("firms");
        let (mining, retail) = (row("mining"), row("retail"));
        assert!(
            capital.is_null(mining),
            "seed {seed}: the dominated cell was released"
        );
        assert!(
            low.is_null(mining),
            "seed {seed}: its interval too must be withheld"
        );
        // The count is not a magnitude: it stays.
        assert!(firms.is_valid(mining));
        assert!(
            capital.is_valid(retail),
            "seed {seed}: the even cell was withheld"
        );

        let bytes = std::fs::read(dir.join(MANIFEST_FILE)).expect("manifest");
        let manifest: SignedManifest = serde_json::from_slice(&bytes).expect("manifest");
        let reports = &manifest.manifest.privacy.disclosure;
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].column, "capital");
        assert!(reports[0].rule.contains("p % rule (p = 10)"), "{reports:?}");
        assert_eq!(reports[0].cells_protected, 1);
        let described = manifest
            .manifest
            .columns
            .iter()
            .find(|c| c.name == "capital")
            .expect("capital described");
        assert!(described.kind.contains("withheld"), "{described:?}");
    }
}
