//! Neighbouring datasets: after ε is reserved, a job may depend on one person only through
//! its noisy quantities.
//!
//! Two fixtures hold the same demo data except for one person — all of their rows, in both
//! tables — and draw the same test-only seeded noise, a function of (seed, draw, group key)
//! only (`gate::noise::Source::Seeded`), so that the noise cancels when their products are
//! compared. Every query the gate files release, and a few hundred random queries over the
//! allowed grammar, run on both; the test asserts what DESIGN.md's release gate promises:
//!
//! - the same outcome, with the very same messages (refusal, failure or error text);
//! - the same columns;
//! - a group shown on one side only, or marked on one side only, is one where the noisy
//!   threshold decided: its noisy distinct-unit count, where shown, is exactly τ (with the
//!   same noise, the other side's count is one less), and there are at most `max_groups` such
//!   groups (one person reaches no more);
//! - for every noisy count and sum, the differences summed over the groups both sides show
//!   are at most the draw's stated L1 sensitivity (averages are ratios of two noisy draws and
//!   are checked through their groups only).
//!
//! `VEIL_NEIGHBOURS_QUERIES` sets how many random queries run (default
//! [`GENERATED_QUERIES_DEFAULT`]); `VEIL_NEIGHBOURS_SEED` picks another stream of them, and
//! `VEIL_NEIGHBOURS_NOISE_SEED` another seeded noise (default [`NOISE_SEED`]). The seeded
//! noise of a group depends on its key and the draw only, so queries over the same keys share
//! their chances of a group at τ: a noise seed gives only a few of them.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use veil_runtime::templates::ApprovalRequest;

use crate::neighbouring::{Compared, Tally, compare_outcomes};
use crate::support::{self, Fixture};

/// Social-insurance records in both fixtures (as in the gate files).
const ROWS: u64 = 20_000;
/// The seeded noise both sides draw.
const NOISE_SEED: u64 = 4_242;
/// Random queries a CI run checks.
const GENERATED_QUERIES_DEFAULT: usize = 200;
/// Queries one fixture pair runs before a fresh pair takes over (the grant's monthly ε is at
/// most 100; each generated query costs at most 1.2 × [`GENERATED_EPSILON`], 0.34 on average).
const QUERIES_PER_PAIR: usize = 200;
const GENERATED_EPSILON: f64 = 0.4;
/// Default seed of the query stream.
const QUERY_SEED_DEFAULT: u64 = 20_261_201;

#[tokio::test]
async fn gate_file_releases_depend_on_one_person_only_through_noise() {
    let mut pair = Pair::new();
    let mut checked = 0;
    for file in [
        "allowed.test",
        "k_anonymity.test",
        "bounding.test",
        "statement.test",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/gate")
            .join(file);
        let text = std::fs::read_to_string(&path).expect("a gate file");
        for case in crate::gate_files::parse(file, &text).expect("the gate file parses") {
            if !case
                .expected
                .iter()
                .any(|l| l.starts_with("released rows="))
            {
                continue;
            }
            let params: Vec<(&str, &str)> = case
                .params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let what = format!("{file}: case `{}`", case.title);
            pair.compare(&what, &case.sql, &params, case.approval.clone())
                .await;
            checked += 1;
        }
    }
    assert!(
        checked >= 20,
        "only {checked} gate-file cases were released"
    );
}

#[tokio::test]
async fn random_queries_depend_on_one_person_only_through_noise() {
    let count = std::env::var("VEIL_NEIGHBOURS_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(GENERATED_QUERIES_DEFAULT);
    let seed = std::env::var("VEIL_NEIGHBOURS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(QUERY_SEED_DEFAULT);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut tally = Tally::default();
    let mut pair = Pair::new();
    let mut on_pair = 0;
    while seen.len() < count {
        let sql = random_query(&mut rng);
        if !seen.insert(sql.clone()) {
            continue;
        }
        if on_pair == QUERIES_PER_PAIR {
            pair = Pair::new();
            on_pair = 0;
        }
        on_pair += 1;
        // ε varies from query to query (0.5× to 1.2× [`GENERATED_EPSILON`]), so the noise
        // scales and thresholds do too: the seeded noise of a group depends on its key, so
        // with one ε every query over the same keys would share one chance of a group at τ.
        let approval = ApprovalRequest {
            epsilon: GENERATED_EPSILON * (0.5 + 0.1 * (seen.len() % 8) as f64),
            ..support::approval()
        };
        let what = format!("random query #{} (seed {seed})", seen.len());
        let outcome = pair.compare(&what, &sql, &[], approval).await;
        tally.add(outcome, &sql);
    }
    eprintln!("{tally:?}");
    assert!(
        tally.failed.is_empty(),
        "allowed queries failed while they ran: {:#?}",
        tally.failed
    );
    // The generator must mostly write queries the gate releases, or the comparison above
    // would be empty.
    assert!(
        tally.released * 2 >= count,
        "only {} of {count} random queries were released: {tally:?}",
        tally.released
    );
    assert!(
        tally.differing_groups > 0,
        "no query had a group the threshold decided differently; the test would not notice a \
         group that one person decides"
    );
}

/// Two fixtures, one person apart, with the same seeded noise.
struct Pair {
    with: Fixture,
    without: Fixture,
}

impl Pair {
    fn new() -> Self {
        let mut with = Fixture::new(ROWS);
        let (mut without, removed) = Fixture::prepared(ROWS, |store| {
            let raw = store.parent().expect("the fixture's folder").join("raw");
            remove_one_person(&raw)
        });
        assert!(
            removed.rows > 1,
            "person {} must hold rows: {removed:?}",
            removed.person
        );
        let seed = std::env::var("VEIL_NEIGHBOURS_NOISE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(NOISE_SEED);
        with.store.seed_test_noise(seed);
        without.store.seed_test_noise(seed);
        Self { with, without }
    }

    /// Runs one query on both sides and checks the promise; returns what happened.
    async fn compare(
        &mut self,
        what: &str,
        sql: &str,
        params: &[(&str, &str)],
        approval: ApprovalRequest,
    ) -> Compared {
        let (a, b) = tokio::join!(
            self.with.run_sql(sql, params, approval.clone()),
            self.without.run_sql(sql, params, approval.clone())
        );
        let context = format!("{what}\n  sql: {sql}\n  params: {params:?}");
        compare_outcomes(&context, a, b, approval.max_groups)
    }
}

/// What [`remove_one_person`] took out.
#[derive(Debug)]
struct Removed {
    person: i64,
    rows: usize,
}

/// Rewrites the raw tables without one person: the first legal representative of an
/// enterprise, so the person is in both tables (and in joins between them).
fn remove_one_person(raw: &Path) -> Removed {
    let enterprises = raw.join("enterprise_registry.parquet");
    let person = read(&enterprises)
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| int_column(b, "legal_rep_id")[0])
        .expect("the demo data has enterprises");
    let rows = rewrite_without(&raw.join("social_insurance.parquet"), "person_id", person);
    rewrite_without(&enterprises, "legal_rep_id", person);
    Removed { person, rows }
}

fn read(path: &Path) -> Vec<RecordBatch> {
    let file = File::open(path).expect("a raw table");
    ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .expect("a Parquet reader")
        .collect::<Result<Vec<_>, _>>()
        .expect("the raw rows")
}

fn int_column(batch: &RecordBatch, name: &str) -> Vec<i64> {
    let column = batch.column_by_name(name).expect("the column");
    let column = cast(column, &DataType::Int64).expect("an integer column");
    column.as_primitive::<Int64Type>().values().to_vec()
}

/// Writes the table at `path` again without the rows whose `column` is `person`; returns how
/// many rows went.
fn rewrite_without(path: &Path, column: &str, person: i64) -> usize {
    let batches = read(path);
    let schema = batches.first().expect("a batch").schema();
    let temporary = path.with_extension("parquet.tmp");
    let mut writer = ArrowWriter::try_new(
        File::create(&temporary).expect("a temporary file"),
        schema,
        None,
    )
    .expect("a Parquet writer");
    let mut removed = 0;
    for batch in &batches {
        let keep: BooleanArray = int_column(batch, column)
            .iter()
            .map(|v| Some(*v != person))
            .collect();
        let kept = filter_record_batch(batch, &keep).expect("filtered rows");
        removed += batch.num_rows() - kept.num_rows();
        writer.write(&kept).expect("rows written");
    }
    writer.close().expect("the Parquet file finished");
    std::fs::rename(&temporary, path).expect("the table replaced");
    removed
}

/// One random query over the allowed grammar: group keys (columns and row-local expressions
/// of them), a filter, and aggregates — always the distinct-unit count, so that the test can
/// see the noisy count a threshold decided on.
fn random_query(rng: &mut ChaCha8Rng) -> String {
    let enterprise = rng.random_range(0..6) == 0;
    let (table, keys, measures, filters): (&str, Vec<String>, Vec<String>, Vec<String>) =
        if enterprise {
            (
                "enterprise_registry",
                {
                    let options: Vec<String> = vec![
                        "city".into(),
                        "industry".into(),
                        "credit_rating".into(),
                        "established_year".into(),
                        format!(
                            "CASE WHEN established_year < {} THEN 'old' ELSE 'new' END AS era",
                            rng.random_range(1990..2020)
                        ),
                        format!("established_year / {} AS period", rng.random_range(2..20)),
                    ];
                    pick(rng, &options, 2)
                },
                {
                    let options: Vec<String> = vec![
                        "COUNT(*) AS enterprises".into(),
                        "SUM(registered_capital) AS capital".into(),
                        "AVG(employees) AS staff".into(),
                        "SUM(employees) AS employees".into(),
                    ];
                    pick(rng, &options, 2)
                },
                {
                    let options: Vec<String> = vec![
                        format!("established_year >= {}", rng.random_range(1980..2024)),
                        format!("employees > {}", rng.random_range(0..500)),
                        "credit_rating IN ('A', 'AA', 'AAA')".into(),
                        format!("registered_capital % {} = 0", rng.random_range(0..4)),
                        format!(
                            "city LIKE '{}%'",
                            ["T", "D", "Y", "J", "X"][rng.random_range(0..5)]
                        ),
                    ];
                    pick(rng, &options, 2)
                },
            )
        } else {
            (
                "social_insurance",
                {
                    let options: Vec<String> = vec![
                        "city".into(),
                        "gender".into(),
                        "industry".into(),
                        "district".into(),
                        "birth_year".into(),
                        "year".into(),
                        format!(
                            "CASE WHEN birth_year < {} THEN 'before' ELSE 'after' END AS era",
                            rng.random_range(1950..2005)
                        ),
                        format!("birth_year / {} AS cohort", rng.random_range(0..12)),
                        format!("birth_year % {} AS residue", rng.random_range(0..7)),
                        format!("substr(district, 1, {}) AS area", rng.random_range(1..4)),
                        "concat(city, '/', gender) AS city_gender".into(),
                        "lower(gender) AS sex".into(),
                        format!("left(industry, {}) AS sector", rng.random_range(1..6)),
                        "CAST(birth_year AS VARCHAR) AS born".into(),
                        format!(
                            "CASE WHEN contribution_months > {} THEN 'long' ELSE 'short' END AS tenure",
                            rng.random_range(0..480)
                        ),
                    ];
                    pick(rng, &options, 2)
                },
                {
                    let options: Vec<String> = vec![
                        "COUNT(*) AS records".into(),
                        "COUNT(monthly_income) AS with_income".into(),
                        "SUM(monthly_income) AS income".into(),
                        "SUM(contribution_months) AS months".into(),
                        "AVG(monthly_income) AS average_income".into(),
                        "AVG(contribution_months) AS average_months".into(),
                    ];
                    pick(rng, &options, 2)
                },
                {
                    let options: Vec<String> = vec![
                        format!("birth_year >= {}", rng.random_range(1950..2005)),
                        format!("year = {}", rng.random_range(2023..2026)),
                        format!("monthly_income > {}", rng.random_range(0..20_000)),
                        format!(
                            "contribution_months / {} > {}",
                            rng.random_range(0..24),
                            rng.random_range(0..20)
                        ),
                        format!(
                            "monthly_income % {} = {}",
                            rng.random_range(0..5),
                            rng.random_range(0..3)
                        ),
                        "gender = 'F'".into(),
                        format!("district LIKE '%{}%'", rng.random_range(0..10)),
                        "city IN ('Taiyuan', 'Datong', 'Yuncheng')".into(),
                        format!(
                            "CAST(district AS INT) IS NULL OR birth_year > {}",
                            rng.random_range(1950..2005)
                        ),
                        format!("length(district) > {}", rng.random_range(0..8)),
                        "industry <> 'Finance' AND NOT (city = 'Linfen')".into(),
                    ];
                    pick(rng, &options, 2)
                },
            )
        };
    let key_names: Vec<String> = keys
        .iter()
        .map(|k| match k.rsplit_once(" AS ") {
            Some((_, alias)) => alias.to_string(),
            None => k.clone(),
        })
        .collect();
    let unit = if enterprise {
        "legal_rep_id"
    } else {
        "person_id"
    };
    let mut select = keys.clone();
    select.push(format!("COUNT(DISTINCT {unit}) AS units"));
    select.extend(measures);
    let mut sql = format!("SELECT {} FROM {table}", select.join(", "));
    if !filters.is_empty() {
        sql.push_str(&format!(" WHERE {}", filters.join(" AND ")));
    }
    if !key_names.is_empty() {
        sql.push_str(&format!(" GROUP BY {}", key_names.join(", ")));
    }
    sql
}

/// Up to `most` distinct items of `from`, in random order.
fn pick(rng: &mut ChaCha8Rng, from: &[String], most: usize) -> Vec<String> {
    let n = rng.random_range(0..=most);
    let mut chosen: Vec<String> = Vec::new();
    while chosen.len() < n {
        let item = &from[rng.random_range(0..from.len())];
        if !chosen.contains(item) {
            chosen.push(item.clone());
        }
    }
    chosen
}
