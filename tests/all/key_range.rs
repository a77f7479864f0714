//! Public key ranges: a policy's `key_range = [lo, hi]` on an integer column is a public key
//! set of every integer in the range, so a product grouped by it has one row per integer,
//! whatever the data holds — a year without data is a marked row, not a missing one.

use std::collections::BTreeMap;

use chrono::Days;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type};
use veil_runtime::catalog::{self, Policy};
use veil_runtime::grants::{self, Disposition, GrantRequest};
use veil_runtime::jobs::{self, JobOutcome, JobRequest};

use crate::support::{self, Fixture, OPERATOR, SOCIAL_POLICY};

/// Social-insurance records in the fixture: thousands of persons in each year with data.
const FIXTURE_ROWS: u64 = 5_000;
/// The demo data's contribution years run from 2023 to 2025; the range starts two years
/// earlier, so two of its years have no row at all.
const YEAR_FIRST: i32 = 2021;
const YEAR_LAST: i32 = 2025;
const YEARS_WITH_DATA_FIRST: i32 = 2023;

/// The demo's social-insurance policy with `year` given a public key range.
fn policy_with_year_range() -> Policy {
    let plain = "[columns.year]\nrole = \"public\"\n";
    assert!(
        SOCIAL_POLICY.contains(plain),
        "the demo policy's year column"
    );
    let ranged =
        format!("[columns.year]\nrole = \"public\"\nkey_range = [{YEAR_FIRST}, {YEAR_LAST}]\n");
    Policy::parse(&SOCIAL_POLICY.replace(plain, &ranged)).expect("policy")
}

/// The fixture with the same social-insurance file registered a second time, as
/// `social_years` under [`policy_with_year_range`], and granted to [`OPERATOR`] by a grant of
/// its own; returns that grant's id too.
fn fixture() -> (Fixture, String) {
    let mut fixture = Fixture::new(FIXTURE_ROWS);
    let file = fixture.raw_path().join("social_insurance.parquet");
    catalog::register(
        &mut fixture.store,
        "social_years",
        &file,
        policy_with_year_range(),
    )
    .expect("register social_years");
    let today = veil_runtime::clock::today();
    let grant = grants::create(
        &mut fixture.store,
        GrantRequest {
            operator: OPERATOR.into(),
            datasets: vec!["social_years".into()],
            purpose: "key range tests".into(),
            valid_from: today - Days::new(30),
            valid_to: today + Days::new(335),
            epsilon_per_month: 100.0,
            delta_per_month: 0.5,
            disposition: Disposition::Archive,
            ownership: veil_runtime::grants::Ownership::Operator,
        },
    )
    .expect("grant");
    (fixture, grant.id.to_string())
}

/// Submits and approves `sql` with the usual approval and runs it under `grant` (the
/// operator holds two, so a job names its own).
async fn run(fixture: &mut Fixture, sql: &str, grant: &str) -> RecordBatch {
    let template = support::submit_and_approve(&mut fixture.store, sql, &[], support::approval())
        .expect("template");
    released_rows(
        jobs::run(
            &mut fixture.store,
            JobRequest {
                operator: OPERATOR.into(),
                template,
                params: Vec::new(),
                grant: Some(grant.to_string()),
            },
        )
        .await,
    )
}

fn released_rows(outcome: veil_runtime::Result<JobOutcome>) -> RecordBatch {
    match outcome {
        Ok(JobOutcome::Released {
            rows: Some(rows), ..
        }) => rows,
        other => panic!("expected a fresh release, got {other:?}"),
    }
}

/// The product's rows by year: `(persons, average income)`, `None` where a cell is NULL.
fn by_year(rows: &RecordBatch) -> BTreeMap<i32, (Option<i64>, Option<f64>)> {
    let year = cast(
        rows.column_by_name("year").expect("a year column"),
        &DataType::Int32,
    )
    .expect("integer years");
    let year = year.as_primitive::<Int32Type>();
    let persons = rows
        .column_by_name("persons")
        .expect("a persons column")
        .as_primitive::<Int64Type>();
    let income = rows
        .column_by_name("income")
        .expect("an income column")
        .as_primitive::<Float64Type>();
    (0..rows.num_rows())
        .map(|r| {
            (
                year.value(r),
                (
                    persons.is_valid(r).then(|| persons.value(r)),
                    income.is_valid(r).then(|| income.value(r)),
                ),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_year_of_a_key_range_is_a_row_and_a_year_without_data_is_marked() {
    let (mut fixture, years_grant) = fixture();
    let sql = "SELECT year, COUNT(DISTINCT person_id) AS persons, AVG(monthly_income) AS income \
               FROM social_years GROUP BY year";
    let rows = run(&mut fixture, sql, &years_grant).await;
    let years = by_year(&rows);

    assert_eq!(
        years.keys().copied().collect::<Vec<_>>(),
        (YEAR_FIRST..=YEAR_LAST).collect::<Vec<_>>(),
        "every year of the range is a row"
    );
    for (year, (persons, income)) in &years {
        if *year < YEARS_WITH_DATA_FIRST {
            assert_eq!(
                (persons, income),
                (&None, &None),
                "{year} has no data: a marked row"
            );
        } else {
            assert!(
                persons.is_some_and(|p| p > 0) && income.is_some(),
                "{year} has thousands of persons: released, got {persons:?} {income:?}"
            );
        }
    }

    // The same query over the same file registered without a range shows only the years
    // whose noisy count cleared the threshold: the range is what makes the empty years rows.
    let plain = "SELECT year, COUNT(DISTINCT person_id) AS persons, AVG(monthly_income) AS income \
                 FROM social_insurance GROUP BY year";
    let plain_grant = fixture.grant.id.to_string();
    let rows = run(&mut fixture, plain, &plain_grant).await;
    assert_eq!(
        by_year(&rows).keys().copied().collect::<Vec<_>>(),
        (YEARS_WITH_DATA_FIRST..=YEAR_LAST).collect::<Vec<_>>(),
        "without a range, a year without data is absent"
    );
}

#[test]
fn a_key_range_is_the_key_set_of_every_integer_in_it() {
    let policy = policy_with_year_range();
    let year = policy.column("year").expect("the year column");
    let keys = year.key_set().expect("a key set");
    assert_eq!(keys.as_ref(), ["2021", "2022", "2023", "2024", "2025"]);
    assert!(
        policy
            .column("district")
            .expect("district")
            .key_set()
            .is_none(),
        "a column without keys or range has no key set"
    );
}
