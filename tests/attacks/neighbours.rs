//! The attack corpus on neighbouring datasets: every case the corpus expects released runs on
//! the canary domain with and without the first canary person (all of their rows, in both
//! tables), with the same test-only seeded noise, and the two outcomes must differ only as the
//! release gate's noise allows (`tests/all/neighbours.rs` states the promise; the comparison
//! is `tests/all/neighbouring.rs`). The attacks single that person out on purpose — a filter
//! on their birth year, a threshold across their income — so this is where one person's
//! influence is easiest to see, if any shows through.

use serde_json::{Map, Value};
use veil_runtime::jobs::JobOutcome;
use veil_runtime::store::Store;
use veil_runtime::templates::ApprovalRequest;

use crate::canary::{CANARIES, Domain};
use crate::corpus::{Case, load_corpus};
use crate::neighbouring::{Tally, compare_outcomes};
use crate::support;

/// The seeded noise both sides draw.
const NOISE_SEED: u64 = 20_261_202;

#[tokio::test]
async fn released_attacks_depend_on_a_canary_only_through_noise() {
    // Cases with extra submission fields (another grant, overrides) are refused by the server
    // before anything runs; they are the corpus's business, not this comparison's.
    let cases: Vec<Case> = load_corpus()
        .into_iter()
        .filter(|c| c.expect.starts_with("released") && c.submit.is_empty())
        .collect();
    assert!(cases.len() >= 40, "only {} released cases", cases.len());
    let with = Domain::new();
    let without = Domain::without(CANARIES[0].person_id);
    let mut a = Store::open(&with.root()).expect("the canary store");
    let mut b = Store::open(&without.root()).expect("the neighbouring store");
    a.seed_test_noise(NOISE_SEED);
    b.seed_test_noise(NOISE_SEED);
    let mut tally = Tally::default();
    for case in &cases {
        let params: Vec<(&str, &str)> = case
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let approval = approval_of(&case.approval);
        let (outcome_a, outcome_b) = tokio::join!(
            run(&mut a, &case.sql, &params, approval.clone()),
            run(&mut b, &case.sql, &params, approval.clone())
        );
        let context = format!(
            "{}:{}: case `{}`\n  sql: {}\n  params: {params:?}",
            case.file, case.line, case.title, case.sql
        );
        let compared = compare_outcomes(&context, outcome_a, outcome_b, approval.max_groups);
        tally.add(compared, &case.sql);
    }
    eprintln!("{tally:?}");
    assert!(
        tally.released * 10 >= cases.len() * 9,
        "the corpus's released cases must mostly release here too: {tally:?}"
    );
}

async fn run(
    store: &mut Store,
    sql: &str,
    params: &[(&str, &str)],
    approval: ApprovalRequest,
) -> veil_runtime::Result<JobOutcome> {
    let template = support::submit_and_approve(store, sql, params, approval)?;
    support::run_template(store, &template, params).await
}

/// A corpus case's approval (the HTTP body's keys) as the library takes it.
fn approval_of(body: &Map<String, Value>) -> ApprovalRequest {
    let mut approval = ApprovalRequest::default();
    for (key, value) in body {
        let number = || {
            value
                .as_f64()
                .unwrap_or_else(|| panic!("approval `{key}` is a number"))
        };
        match key.as_str() {
            "epsilon" => approval.epsilon = number(),
            "delta" => approval.delta = number(),
            "k" => approval.k = number() as u32,
            "max_groups" => approval.max_groups = number() as u32,
            "max_rows" => approval.max_rows = number() as u32,
            "price_per_run_fen" => approval.price_per_run_fen = number() as i64,
            "wall_seconds" => approval.wall_seconds = number() as u32,
            "memory_mib" => approval.memory_mib = number() as u32,
            other => panic!("approval key `{other}` is not known to this test; add it here"),
        }
    }
    approval
}
