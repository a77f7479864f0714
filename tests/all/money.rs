//! Money, end to end: real jobs are charged, a product is sold and bought, the month is
//! settled and every statement matches figures computed by hand from the meter and the
//! catalog.
//!
//! - a released run costs its template's per-run fee plus one fen per row scanned (the price
//!   book below); a reused run costs nothing; the rows fee of a job reading two datasets is
//!   split between their providers by registered rows, rounded down, the rest to the platform;
//! - a sale of 999 fen at 50 / 15 / 35 % gives the provider 499, the operator 349 and the
//!   platform 151; buying twice charges once;
//! - settling the open month is refused; the `veil` binary, its clock pinned after the month,
//!   settles it, and settling again writes byte-identical files;
//! - a recalled product cannot be listed, bought or downloaded, and its buyers are named.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use veil_runtime::ids::{Fen, ProductId};
use veil_runtime::jobs::JobOutcome;
use veil_runtime::ledger;
use veil_runtime::market;
use veil_runtime::metering::{self, MeterRecord};
use veil_runtime::prices::{self, PriceRequest, Shares};
use veil_runtime::principals::{self, Role};
use veil_runtime::products;
use veil_runtime::settlement;
use veil_runtime::store::Store;
use veil_runtime::{Error, audit, clock};

use crate::support::{self, Fixture, OPERATOR};

/// Social-insurance rows generated per test: enough for every city to pass k = 5.
const ROWS: u64 = 2_000;
/// One provider's dataset.
const BY_CITY: &str = "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance \
     WHERE year = :year GROUP BY city";
/// Both providers' datasets, joined on the person.
const BY_RATING: &str = "SELECT e.credit_rating, COUNT(DISTINCT s.person_id) AS persons \
     FROM enterprise_registry e JOIN social_insurance s ON e.legal_rep_id = s.person_id \
     GROUP BY e.credit_rating";
const HRSS: &str = "provider:Shanxi Provincial Department of Human Resources and Social Security";
const SAMR: &str = "provider:Shanxi Provincial Administration for Market Regulation";
/// The per-run fee `support::approval()` pins.
const PER_RUN_FEE: i64 = 100;
const SALE_PRICE: i64 = 999;

fn price_book(store: &mut Store) {
    prices::set(
        store,
        "bureau",
        &PriceRequest {
            // One fen per row scanned.
            fee_per_million_rows_fen: 1_000_000,
            shares: Shares {
                provider_bp: 5_000,
                platform_bp: 1_500,
                operator_bp: 3_500,
            },
            capitalisation_rate_bp: veil_runtime::prices::DEFAULT_CAPITALISATION_RATE_BP,
        },
    )
    .expect("price book");
}

fn released(outcome: &JobOutcome) -> (String, ProductId, bool) {
    match outcome {
        JobOutcome::Released {
            job_id,
            product_id,
            reused,
            ..
        } => (job_id.to_string(), product_id.clone(), *reused),
        other => panic!("expected a release, got {other:?}"),
    }
}

fn meter_of(store: &Store, job: &str) -> MeterRecord {
    metering::list(store.conn())
        .expect("meter")
        .into_iter()
        .find(|m| m.job_id == job)
        .expect("a meter record for the job")
}

fn registered_rows(store: &Store, name: &str) -> i64 {
    store
        .conn()
        .query_row("SELECT rows FROM datasets WHERE name = ?1", [name], |row| {
            row.get(0)
        })
        .expect("dataset rows")
}

fn veil_at(instant: &str, args: &[&str]) -> std::process::Output {
    Command::new(support::veil_bin())
        .env_remove("VEIL_DATA_DIR")
        .env("VEIL_CLOCK", instant)
        .args(args)
        .output()
        .expect("run veil")
}

fn files_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("statements folder")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect()
}

fn credit_of(statement: &settlement::Statement) -> i64 {
    statement.total_credit.0
}

#[tokio::test]
async fn a_month_of_runs_and_sales_settles_to_the_fen() {
    let mut fixture = Fixture::new(ROWS);
    price_book(&mut fixture.store);
    for buyer in ["buyer-a", "buyer-b"] {
        principals::add(&mut fixture.store, Role::Buyer, buyer).expect("buyer");
    }

    let (job_one, product, _) = released(
        &fixture
            .run_sql(BY_CITY, &[("year", "2024")], support::approval())
            .await
            .expect("run"),
    );
    let (rerun, _, reused) = released(
        &fixture
            .run_sql(BY_CITY, &[("year", "2024")], support::approval())
            .await
            .expect("rerun"),
    );
    assert!(reused, "the identical rerun reuses the product");
    let (job_two, _, _) = released(
        &fixture
            .run_sql(BY_RATING, &[], support::approval())
            .await
            .expect("run"),
    );

    // Meter prices: per-run fee + one fen per row scanned; the reuse is free.
    let one = meter_of(&fixture.store, &job_one);
    let two = meter_of(&fixture.store, &job_two);
    let rows_one = one.rows_scanned as i64;
    let rows_two = two.rows_scanned as i64;
    assert!(rows_one > 0 && rows_two > 0);
    assert_eq!(one.price, Fen(PER_RUN_FEE + rows_one));
    assert_eq!(two.price, Fen(PER_RUN_FEE + rows_two));
    assert_eq!(meter_of(&fixture.store, &rerun).price, Fen(0));

    // By hand: job two's rows fee split by registered rows, rounded down.
    let si = i128::from(registered_rows(&fixture.store, "social_insurance"));
    let er = i128::from(registered_rows(&fixture.store, "enterprise_registry"));
    let hrss_two = (i128::from(rows_two) * si / (si + er)) as i64;
    let samr_two = (i128::from(rows_two) * er / (si + er)) as i64;
    let platform_rounding = rows_two - hrss_two - samr_two;

    // The sale: only the product's operator or the bureau may list it.
    let err = market::list_for_sale(
        &mut fixture.store,
        Role::Operator,
        "another operator",
        &product,
        Fen(SALE_PRICE),
    )
    .expect_err("not the owner");
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert!(
        market::list_for_sale(
            &mut fixture.store,
            Role::Operator,
            OPERATOR,
            &product,
            Fen(0)
        )
        .is_err(),
        "a price of zero is refused"
    );
    market::list_for_sale(
        &mut fixture.store,
        Role::Operator,
        OPERATOR,
        &product,
        Fen(500),
    )
    .expect("list");
    let listing = market::list_for_sale(
        &mut fixture.store,
        Role::Bureau,
        "bureau",
        &product,
        Fen(SALE_PRICE),
    )
    .expect("relist");
    assert_eq!(listing.operator, OPERATOR);
    assert_eq!(
        market::offers(fixture.store.conn()).expect("offers")[0].price,
        Fen(SALE_PRICE)
    );

    let first = market::purchase(&mut fixture.store, "buyer-a", &product).expect("buy");
    let again = market::purchase(&mut fixture.store, "buyer-a", &product).expect("buy again");
    assert_eq!(first, again, "buying twice returns the first purchase");
    market::purchase(&mut fixture.store, "buyer-b", &product).expect("buy");
    assert!(
        market::purchase(&mut fixture.store, OPERATOR, &product).is_err(),
        "only buyer principals buy"
    );
    assert_eq!(
        market::buyers_of(fixture.store.conn(), &product).expect("buyers"),
        ["buyer-a", "buyer-b"]
    );
    assert_eq!(
        market::purchases_of(fixture.store.conn(), "buyer-a")
            .expect("purchases")
            .len(),
        1
    );

    // Downloads: only a buyer who bought it, only the product's files, each recorded.
    market::authorize_download(fixture.store.conn(), "buyer-a", &product).expect("authorized");
    assert!(market::authorize_download(fixture.store.conn(), "buyer-c", &product).is_err());
    market::record_download(&mut fixture.store, "buyer-a", &product, "result.csv")
        .expect("download");
    assert!(
        market::record_download(&mut fixture.store, "buyer-a", &product, "../veil.db").is_err()
    );
    assert!(
        market::record_download(&mut fixture.store, "buyer-c", &product, "result.csv").is_err()
    );
    let downloads = market::downloads_of(fixture.store.conn(), &product).expect("downloads");
    assert_eq!(downloads.len(), 1);
    assert_eq!(downloads[0].actor, "buyer-a");

    // The ledger: two runs and two sales, each balanced; it cannot be edited.
    let postings = ledger::postings(fixture.store.conn(), None).expect("postings");
    assert_eq!(postings.len(), 4);
    assert!(postings.iter().all(|p| p.debits() == p.credits()));
    for sql in [
        "UPDATE ledger_lines SET credit_fen = 1",
        "DELETE FROM ledger_postings",
    ] {
        let err = fixture
            .store
            .conn()
            .execute(sql, [])
            .expect_err("append-only");
        assert!(err.to_string().contains("append-only"), "{err}");
    }

    // The provider's view of its datasets.
    let usage =
        settlement::provider_usage(fixture.store.conn(), HRSS.trim_start_matches("provider:"))
            .expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].name, "social_insurance");
    assert_eq!(usage[0].rows_fee_earned, Fen(rows_one + hrss_two));
    assert_eq!(usage[0].sale_shares_earned, Fen(2 * 499));

    // The month is still open in bureau time.
    let period = clock::period_of(clock::now());
    let err = settlement::settle(&mut fixture.store, &period, "bureau").expect_err("open period");
    assert!(err.to_string().contains("has not ended yet"), "{err}");
    let err = settlement::settle(&mut fixture.store, "2026-13", "bureau").expect_err("malformed");
    assert!(err.to_string().contains("YYYY-MM"), "{err}");

    // The bureau settles it with the binary, its clock pinned to the end of the month.
    let (_, end) = settlement::period_bounds(&period).expect("bounds");
    let at_end = clock::format(end);
    let data_dir = fixture.store_path();
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let output = veil_at(
        &at_end,
        &["settle", "--data-dir", data_dir, "--period", &period],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("operator:op-test"), "{stdout}");

    let statement = |party: &str| {
        settlement::statement(&fixture.store, &period, party).expect("settled statement")
    };
    let operator = statement(&format!("operator:{OPERATOR}"));
    assert_eq!(operator.total_debit, Fen(one.price.0 + two.price.0));
    assert_eq!(credit_of(&operator), 2 * 349);
    assert_eq!(operator.net, Fen(2 * 349 - one.price.0 - two.price.0));
    assert_eq!(credit_of(&statement(HRSS)), rows_one + hrss_two + 2 * 499);
    assert_eq!(credit_of(&statement(SAMR)), samr_two);
    let platform = statement("platform");
    assert_eq!(
        credit_of(&platform),
        2 * PER_RUN_FEE + platform_rounding + 2 * 151
    );
    let summary = platform
        .summary
        .expect("the platform summarises the period");
    let revenue = one.price.0 + two.price.0 + 2 * SALE_PRICE;
    assert_eq!(summary.total_debit, Fen(revenue));
    assert_eq!(summary.total_credit, Fen(revenue));
    assert_eq!((summary.runs, summary.sales), (2, 2));
    // Every statement line names its posting and line.
    let line_ids: Vec<i64> = postings
        .iter()
        .flat_map(|p| p.lines.iter().map(|l| l.id))
        .collect();
    assert!(operator.lines.iter().all(|l| line_ids.contains(&l.line_id)));
    assert!(
        settlement::statement(&fixture.store, &period, "provider:nobody").is_err(),
        "a party without entries has no statement"
    );

    // Settling again writes the same bytes.
    let dir = fixture.store.statements_dir().join(&period);
    let before = files_in(&dir);
    assert_eq!(
        before.len(),
        2 * 4,
        "platform, operator and two providers, CSV and JSON"
    );
    let output = veil_at(
        &at_end,
        &["settle", "--data-dir", data_dir, "--period", &period],
    );
    assert!(output.status.success());
    assert_eq!(files_in(&dir), before);

    // Both settlements are audited and the chain holds.
    let settled: i64 = fixture
        .store
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE kind = 'period.settled'",
            [],
            |row| row.get(0),
        )
        .expect("count");
    assert_eq!(settled, 2);
    let verified = audit::verify(&fixture.store).expect("verify");
    assert!(verified.is_ok(), "{verified:?}");
}

#[tokio::test]
async fn a_recalled_product_cannot_be_bought_or_downloaded() {
    let mut fixture = Fixture::new(ROWS);
    for buyer in ["buyer-a", "buyer-b"] {
        principals::add(&mut fixture.store, Role::Buyer, buyer).expect("buyer");
    }
    let (_, product, _) = released(
        &fixture
            .run_sql(BY_CITY, &[("year", "2025")], support::approval())
            .await
            .expect("run"),
    );
    assert!(
        market::purchase(&mut fixture.store, "buyer-a", &product).is_err(),
        "not for sale yet"
    );
    let data_dir = fixture.store_path();
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let now = clock::format(clock::now());
    let output = veil_at(
        &now,
        &[
            "product",
            "sell",
            "--data-dir",
            data_dir,
            product.as_str(),
            "--price-fen",
            "2500",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    market::purchase(&mut fixture.store, "buyer-a", &product).expect("buy");

    let output = veil_at(
        &now,
        &[
            "product",
            "recall",
            "--data-dir",
            data_dir,
            product.as_str(),
            "--reason",
            "a source dataset was withdrawn",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("buyer-a"), "the buyers are named: {stdout}");

    let recall = market::recall_of(fixture.store.conn(), &product)
        .expect("recall")
        .expect("recalled");
    assert_eq!(recall.buyers, ["buyer-a"]);
    assert!(
        products::get(fixture.store.conn(), &product)
            .expect("product")
            .recalled
    );
    let err = market::purchase(&mut fixture.store, "buyer-b", &product).expect_err("recalled");
    assert!(err.to_string().contains("recalled"), "{err}");
    let err = market::authorize_download(fixture.store.conn(), "buyer-a", &product)
        .expect_err("recalled");
    assert!(err.to_string().contains("recalled"), "{err}");
    assert!(
        market::record_download(&mut fixture.store, "buyer-a", &product, "result.csv").is_err()
    );
    assert!(
        market::list_for_sale(&mut fixture.store, Role::Bureau, "bureau", &product, Fen(1))
            .is_err()
    );
    assert!(
        market::offers(fixture.store.conn())
            .expect("offers")
            .is_empty()
    );
    assert!(market::recall(&mut fixture.store, &product, "again").is_err());
    // Only the one sale was posted.
    let sales = ledger::postings(fixture.store.conn(), None)
        .expect("postings")
        .into_iter()
        .filter(|p| p.kind == "sale")
        .count();
    assert_eq!(sales, 1);
}

#[test]
fn a_version_3_store_is_upgraded_with_the_money_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    drop(Store::init(&root).expect("store"));
    {
        let conn = rusqlite::Connection::open(root.join("veil.db")).expect("open");
        conn.execute_batch(
            "DROP TABLE price_book; DROP TABLE ledger_lines; DROP TABLE ledger_postings;
             DROP TABLE listings; DROP TABLE purchases; DROP TABLE recalls; DROP TABLE downloads;
             DROP TABLE job_submissions; DROP TABLE grant_requests;
             ALTER TABLE jobs DROP COLUMN requested_grant;
             UPDATE meta SET value = '3' WHERE key = 'schema_version';",
        )
        .expect("make it version 3");
    }
    let mut store = Store::open(&root).expect("upgrade on open");
    let version: String = store
        .conn()
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |row| row.get(0),
        )
        .expect("version");
    // Upgraded to the current version (5 keyed the audit log, see tests/all/audit.rs; 6 added
    // the remembered module refusals, 7 the datasets' quality reports, 8 rotated keys' expiry,
    // 9 the governance tables, 10 the objects of datasets on object storage).
    assert_eq!(version, "10");
    price_book(&mut store);
    assert!(
        ledger::postings(store.conn(), None)
            .expect("ledger")
            .is_empty()
    );
    let err = store
        .conn()
        .execute("DELETE FROM price_book", [])
        .expect_err("the triggers came back too");
    assert!(err.to_string().contains("append-only"), "{err}");
}
