//! The privacy budget is a hard limit, reserved atomically and never refunded.
//!
//! - once a grant's monthly ε is spent, the next job is refused with `budget.exhausted`;
//! - an identical rerun returns the earlier product and spends nothing;
//! - many jobs racing for a budget that allows one run, from separate connections and threads,
//!   release exactly one product and record exactly one reservation;
//! - ε reserved by a job the gate then refuses stays spent;
//! - outside the grant's term nothing runs (`grant.term`) and nothing is spent;
//! - a job whose bounding state could outgrow its memory limit is refused before ε
//!   (`resources.limit`, naming the limit that would do).

use std::sync::{Arc, Barrier};

use veil_runtime::budget::{self, Spent};
use veil_runtime::jobs::{self, JobOutcome, JobRequest};
use veil_runtime::store::Store;
use veil_runtime::templates::ApprovalRequest;
use veil_runtime::{clock, metering};

use crate::support::{self, Fixture, OPERATOR};

/// Social-insurance rows generated per test: enough for every city to pass k = 5.
const ROWS: u64 = 2_000;
/// Distinct insured persons per city in one year.
const BY_CITY: &str = "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance \
     WHERE year = :year GROUP BY city";

/// ε 1 per run (the support default).
fn one_epsilon() -> ApprovalRequest {
    support::approval()
}

fn spent(store: &Store, grant: &str) -> Spent {
    budget::spent_by_grant(store.conn(), grant, &budget::Period::of(clock::now())).expect("spent")
}

fn codes(outcome: &JobOutcome) -> Vec<&'static str> {
    match outcome {
        JobOutcome::Rejected { refusal, .. } => refusal.codes(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn run_request(template: &str, year: &str) -> JobRequest {
    JobRequest {
        operator: OPERATOR.into(),
        template: template.into(),
        params: vec![("year".into(), year.into())],
        grant: None,
    }
}

#[tokio::test]
async fn an_exhausted_budget_refuses_the_next_job() {
    let mut fixture = Fixture::with_budget(ROWS, 2.0);
    let grant = fixture.grant.id.to_string();
    let mut outcomes = Vec::new();
    for year in ["2023", "2024", "2025"] {
        outcomes.push(
            fixture
                .run_sql(BY_CITY, &[("year", year)], one_epsilon())
                .await
                .expect("job"),
        );
    }
    for outcome in &outcomes[..2] {
        assert!(
            matches!(outcome, JobOutcome::Released { reused: false, .. }),
            "{outcome:?}"
        );
    }
    assert_eq!(codes(&outcomes[2]), ["budget.exhausted"]);
    if let JobOutcome::Rejected { refusal, .. } = &outcomes[2] {
        // The operator learns what is left and what the run needs.
        let message = &refusal.violations[0].message;
        assert!(
            message.contains("ε = 0 left") && message.contains("needs ε = 1"),
            "{message}"
        );
    }
    assert_eq!(spent(&fixture.store, &grant).micro_epsilon.0, 2_000_000);
    // The refused job is metered, at no ε and no price.
    let meter = metering::list(fixture.store.conn()).expect("meter");
    let refused = meter
        .iter()
        .find(|m| m.job_id == outcomes[2].job_id().as_str())
        .expect("a meter record for the refused job");
    assert_eq!(
        (
            refused.end_state.as_str(),
            refused.micro_epsilon.0,
            refused.price.0
        ),
        ("rejected", 0, 0)
    );
}

#[tokio::test]
async fn an_identical_rerun_returns_the_same_product_and_spends_nothing() {
    let mut fixture = Fixture::with_budget(ROWS, 2.0);
    let grant = fixture.grant.id.to_string();
    let first = fixture
        .run_sql(BY_CITY, &[("year", "2025")], one_epsilon())
        .await
        .expect("job");
    let JobOutcome::Released {
        product_id: first_product,
        reused: false,
        ..
    } = &first
    else {
        panic!("expected a fresh release, got {first:?}");
    };
    let after_first = spent(&fixture.store, &grant);
    assert_eq!(after_first.micro_epsilon.0, 1_000_000);

    for _ in 0..2 {
        let again = fixture
            .run_sql(BY_CITY, &[("year", "2025")], one_epsilon())
            .await
            .expect("job");
        let JobOutcome::Released {
            product_id,
            reused,
            job_id,
            ..
        } = &again
        else {
            panic!("expected the earlier product, got {again:?}");
        };
        assert_eq!(product_id, first_product);
        assert!(reused);
        assert_ne!(job_id, first.job_id(), "a rerun is a job of its own");
        assert_eq!(spent(&fixture.store, &grant), after_first);
        let job = jobs::get(&fixture.store, job_id.as_str()).expect("job");
        assert_eq!(job.reused_from.as_deref(), Some(first.job_id().as_str()));
    }
    // A different parameter value is a different release and does spend.
    let other = fixture
        .run_sql(BY_CITY, &[("year", "2024")], one_epsilon())
        .await
        .expect("job");
    assert!(matches!(other, JobOutcome::Released { reused: false, .. }));
    assert_eq!(spent(&fixture.store, &grant).micro_epsilon.0, 2_000_000);
}

/// Threads racing for a budget that allows one run.
const RACERS: usize = 8;

#[test]
fn concurrent_jobs_on_a_budget_for_one_release_exactly_one() {
    let mut fixture = Fixture::with_budget(ROWS, 1.0);
    let grant = fixture.grant.id.to_string();
    let template = support::submit_and_approve(
        &mut fixture.store,
        BY_CITY,
        &[("year", "2025")],
        one_epsilon(),
    )
    .expect("template");
    let path = fixture.store_path();
    let barrier = Arc::new(Barrier::new(RACERS));
    let handles: Vec<_> = (0..RACERS)
        .map(|i| {
            let (path, barrier, template) = (path.clone(), barrier.clone(), template.clone());
            // Different years, so no job is an identical rerun of another.
            let year = (2025 - i as i64).to_string();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let mut store = Store::open(&path).expect("open store");
                barrier.wait();
                runtime
                    .block_on(jobs::run(&mut store, run_request(&template, &year)))
                    .expect("job")
            })
        })
        .collect();
    let outcomes: Vec<JobOutcome> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();

    let released: Vec<&JobOutcome> = outcomes
        .iter()
        .filter(|o| matches!(o, JobOutcome::Released { .. }))
        .collect();
    assert_eq!(released.len(), 1, "{outcomes:?}");
    for outcome in &outcomes {
        if !matches!(outcome, JobOutcome::Released { .. }) {
            assert_eq!(codes(outcome), ["budget.exhausted"]);
        }
    }
    let store = Store::open(&path).expect("open store");
    let reservations: Vec<(String, i64)> = store
        .conn()
        .prepare("SELECT job_id, micro_epsilon FROM budget_spend WHERE dataset_id = '*'")
        .expect("query")
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        reservations,
        [(released[0].job_id().to_string(), 1_000_000)],
        "one reservation, by the released job"
    );
    assert_eq!(spent(&store, &grant).micro_epsilon.0, 1_000_000);
    // Every racer was metered, and the audit chain survived the race.
    assert_eq!(
        metering::list(store.conn()).expect("meter").len(),
        RACERS,
        "one meter record per job"
    );
    let verified = veil_runtime::audit::verify(&store).expect("verify");
    assert!(verified.is_ok(), "{verified:?}");
}

#[tokio::test]
async fn epsilon_reserved_by_a_job_whose_only_group_is_marked_is_not_refunded() {
    let mut fixture = Fixture::with_budget(ROWS, 1.5);
    let grant = fixture.grant.id.to_string();
    // One group (no GROUP BY) with far fewer than k = 10,000 persons: after the budget was
    // reserved and the query ran, the noisy count is below the threshold, so the product's one
    // row is marked (no number). That is a release like any other — its outcome must not
    // depend on the data — and its ε stays spent.
    let marked = fixture
        .run_sql(
            "SELECT COUNT(DISTINCT person_id) AS persons FROM social_insurance WHERE year = :year",
            &[("year", "2025")],
            ApprovalRequest {
                k: 10_000,
                ..one_epsilon()
            },
        )
        .await
        .expect("job");
    let JobOutcome::Released {
        rows: Some(rows), ..
    } = &marked
    else {
        panic!("expected a release, got {marked:?}");
    };
    assert_eq!((rows.num_rows(), rows.column(0).null_count()), (1, 1));
    assert_eq!(spent(&fixture.store, &grant).micro_epsilon.0, 1_000_000);
    let meter = metering::list(fixture.store.conn()).expect("meter");
    assert_eq!(meter.len(), 1);
    assert_eq!(
        (meter[0].end_state.as_str(), meter[0].micro_epsilon.0),
        ("released", 1_000_000),
        "the run is metered with its ε"
    );

    // Only 0.5 of the grant's 1.5 is left, so the next ordinary run at ε 1 is refused.
    let next = fixture
        .run_sql(BY_CITY, &[("year", "2025")], one_epsilon())
        .await
        .expect("job");
    assert_eq!(codes(&next), ["budget.exhausted"]);
    assert_eq!(spent(&fixture.store, &grant).micro_epsilon.0, 1_000_000);
}

#[tokio::test]
async fn outside_its_term_a_grant_runs_nothing_and_spends_nothing() {
    // A fresh store whose only grant ended in 2020; the clock is not pinned, because it is
    // shared by every test in this process.
    let Fixture {
        dir: _dir,
        mut store,
        grant: expired,
    } = Fixture::with_term(
        ROWS,
        10.0,
        "2020-01-01".parse().expect("date"),
        "2020-12-31".parse().expect("date"),
    );
    let template =
        support::submit_and_approve(&mut store, BY_CITY, &[("year", "2025")], one_epsilon())
            .expect("template");

    // Whether the grant is chosen for the job or named by it, the term is what refuses it.
    for named in [None, Some(expired.id.to_string())] {
        let outcome = jobs::run(
            &mut store,
            JobRequest {
                grant: named.clone(),
                ..run_request(&template, "2025")
            },
        )
        .await
        .expect("job");
        assert_eq!(codes(&outcome), ["grant.term"], "grant named: {named:?}");
        if let JobOutcome::Rejected { refusal, .. } = &outcome {
            let message = &refusal.violations[0].message;
            assert!(
                message.contains("2020-12-31") || message.contains("renew"),
                "{message}"
            );
        }
    }
    assert_eq!(spent(&store, expired.id.as_str()), Spent::default());
    let reservations: i64 = store
        .conn()
        .query_row("SELECT COUNT(*) FROM budget_spend", [], |row| row.get(0))
        .expect("count");
    assert_eq!(reservations, 0);
}

/// A job whose per-person bounding state could outgrow its memory limit on the registered
/// table is refused before any ε is reserved, with `resources.limit` and the limit that would
/// do; approved with that limit, the same query releases. (Stopping such a job half-way, after
/// ε was spent, would make its outcome depend on how many persons the data holds.)
#[tokio::test]
async fn a_job_too_large_for_its_memory_limit_is_refused_before_any_epsilon() {
    /// Enough rows that the worst-case state exceeds 5/8 of 1 MiB.
    const LARGE_ROWS: u64 = 20_000;
    let mut fixture = Fixture::with_budget(LARGE_ROWS, 10.0);
    let grant = fixture.grant.id.to_string();
    let tight = ApprovalRequest {
        memory_mib: 1,
        ..one_epsilon()
    };
    let refused = fixture
        .run_sql(BY_CITY, &[("year", "2024")], tight)
        .await
        .expect("job");
    assert_eq!(codes(&refused), ["resources.limit"]);
    let JobOutcome::Rejected { refusal, .. } = &refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    let message = &refusal.violations[0].message;
    let needed: u32 = message
        .split("--memory-mib ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the refusal names the memory limit to approve: {message}"));
    assert!(needed > 1, "{message}");
    assert_eq!(
        spent(&fixture.store, &grant).micro_epsilon.0,
        0,
        "a refusal before the reservation spends nothing"
    );
    let enough = ApprovalRequest {
        memory_mib: needed,
        ..one_epsilon()
    };
    // The same query as a new template (an identical one would be the approved one again).
    let same_query = BY_CITY.replace("AS persons", "AS insured");
    let released = fixture
        .run_sql(&same_query, &[("year", "2024")], enough)
        .await
        .expect("job");
    assert!(
        matches!(released, JobOutcome::Released { reused: false, .. }),
        "{released:?}"
    );
}
