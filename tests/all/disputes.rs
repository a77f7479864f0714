//! Disputes end to end, over HTTP and through the `veil` binary: a buyer disputes a purchase,
//! the bureau upholds it and the sale is refunded by a posting that reverses it to the fen,
//! shown in the statements of the month it is posted in; a rejected dispute posts nothing;
//! `veil audit verify` still passes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use veil_runtime::ledger::{self, Posting};
use veil_runtime::principals::{self, Role};
use veil_sdk::api::ApproveTemplate;
use veil_sdk::client::{Client, ClientError};

use crate::serve::{Server, add_principals, approved_template, persons_by_city, released_product};
use crate::support::{Fixture, Run, veil_bin};

/// `veil client ARGS` as the principal with `key`.
fn veil_client(server: &Server, key: &str, args: &[&str]) -> Run {
    Command::new(veil_bin())
        .arg("client")
        .args(args)
        .env("VEIL_URL", &server.url)
        .env("VEIL_TOKEN", key)
        .output()
        .expect("veil client runs")
        .into()
}

/// `veil ARGS --data-dir STORE`, with the clock pinned at `clock` if given.
fn veil(store: &Path, clock: Option<DateTime<Utc>>, args: &[&str]) -> Run {
    let mut command = Command::new(veil_bin());
    command.args(args).arg("--data-dir").arg(store);
    if let Some(at) = clock {
        command.env("VEIL_CLOCK", veil_runtime::clock::format(at));
    }
    command.output().expect("veil runs").into()
}

/// A settled statement as JSON, read from the store's files.
fn statement_file(store: &Path, period: &str, party: &str) -> Value {
    let account = ledger::Account::parse(party).expect("party");
    let path = veil_runtime::settlement::existing_file(
        &store.join("statements").join(period),
        &account,
        "json",
    );
    serde_json::from_slice(&std::fs::read(&path).expect("statement file")).expect("json")
}

/// What a statement's lines for one purchase (its sale and its refund) add up to: credit
/// minus debit.
fn net_for_purchase(statement: &Value, purchase: &str) -> i64 {
    statement["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter(|l| l["source_id"] == purchase || l["reverses_purchase_id"] == purchase)
        .map(|l| l["credit"].as_i64().unwrap_or(0) - l["debit"].as_i64().unwrap_or(0))
        .sum()
}

fn posting_of(postings: &[Posting], source_kind: &str, source_id: &str) -> Posting {
    postings
        .iter()
        .find(|p| p.source_kind == source_kind && p.source_id == source_id)
        .unwrap_or_else(|| panic!("no posting for {source_kind} {source_id}"))
        .clone()
}

/// Each refund line is its sale line with debit and credit swapped: same account, same fen,
/// same dataset.
fn assert_reverses(refund: &Posting, sale: &Posting) {
    assert_eq!(refund.kind, "refund");
    assert_eq!(refund.lines.len(), sale.lines.len(), "{refund:?}");
    for (r, s) in refund.lines.iter().zip(&sale.lines) {
        assert_eq!(r.account, s.account);
        assert_eq!((r.debit, r.credit), (s.credit, s.debit), "{r:?} vs {s:?}");
        assert_eq!(r.dataset_id, s.dataset_id);
        assert!(r.item.starts_with("refund of "), "{}", r.item);
    }
    assert_eq!(refund.debits(), refund.credits(), "the refund balances");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upheld_dispute_refunds_the_sale_in_the_next_statements_and_a_rejected_one_posts_nothing()
 {
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let other_buyer_key = principals::add(&mut fixture.store, Role::Buyer, "buyer-2")
        .expect("second buyer")
        .1
        .expose()
        .to_string();
    let store = fixture.store_path();
    let server = Server::start(&store, 1);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let buyer = Client::new(&server.url, &keys.buyer).expect("client");
    let other_buyer = Client::new(&server.url, &other_buyer_key).expect("client");

    // As in serve.rs: a run at 250 fen, a sale at 1001 fen split provider 400, operator 400,
    // platform 201 (the default price book). Both buyers buy the product.
    let template = approved_template(
        &operator,
        &bureau,
        &persons_by_city(false),
        ApproveTemplate {
            epsilon: Some(1.0),
            k: Some(5),
            price_per_run_fen: Some(250),
            ..Default::default()
        },
    )
    .await;
    let product = released_product(&operator, &template).await;
    operator
        .list_for_sale(&product, 1_001)
        .await
        .expect("listed");
    let bought = buyer.purchase(&product).await.expect("bought");
    let other_bought = other_buyer.purchase(&product).await.expect("bought");

    // The buyer disputes its purchase by product id through `veil client`.
    let opened = veil_client(
        &server,
        &keys.buyer,
        &[
            "--json",
            "dispute",
            "open",
            &product,
            "--reason",
            "the file has no rows for 太原",
        ],
    );
    assert_eq!(opened.code, Some(0), "{opened}");
    let dispute: Value = serde_json::from_str(&opened.stdout).expect("json");
    let dispute_id = dispute["id"].as_str().expect("id").to_string();
    assert_eq!(dispute["purchase_id"], bought.id.as_str());
    assert_eq!(dispute["state"], "open");

    // A second dispute on the same purchase while one is open is refused.
    let twice = buyer.open_dispute(&bought.id, "still broken").await;
    assert!(
        matches!(&twice, Err(ClientError::Conflict(m)) if m.contains("already has an open dispute")),
        "{twice:?}"
    );
    // A buyer cannot dispute another buyer's purchase: it does not exist for it.
    let foreign = other_buyer.open_dispute(&bought.id, "not mine").await;
    assert!(
        matches!(&foreign, Err(ClientError::NotFound(_))),
        "{foreign:?}"
    );
    // Only a buyer opens disputes; a reason is required.
    assert!(matches!(
        operator.open_dispute(&bought.id, "x").await,
        Err(ClientError::Forbidden(_))
    ));
    assert!(matches!(
        other_buyer.open_dispute(&other_bought.id, "   ").await,
        Err(ClientError::Invalid(_))
    ));
    // Each buyer sees only its own disputes; the bureau sees all.
    assert!(other_buyer.disputes().await.expect("list").is_empty());
    assert_eq!(bureau.disputes().await.expect("list").len(), 1);

    // The other buyer's dispute is rejected: nothing is posted.
    let postings_before = ledger::postings(fixture.store.conn(), None)
        .expect("postings")
        .len();
    let second = other_buyer
        .open_dispute(&other_bought.id, "columns are mislabelled")
        .await
        .expect("opened");
    let rejected = veil_client(
        &server,
        &keys.bureau,
        &[
            "dispute",
            "reject",
            &second.id,
            "--reason",
            "the labels match the manifest",
        ],
    );
    assert_eq!(rejected.code, Some(0), "{rejected}");
    assert!(rejected.stdout.contains("rejected"), "{rejected}");
    let seen = other_buyer.disputes().await.expect("list");
    assert_eq!(seen[0].state, "rejected");
    assert_eq!(
        seen[0].decision_reason.as_deref(),
        Some("the labels match the manifest")
    );
    assert_eq!(seen[0].refund_posting_id, None);
    assert_eq!(
        ledger::postings(fixture.store.conn(), None)
            .expect("postings")
            .len(),
        postings_before,
        "a rejected dispute posts nothing"
    );
    // A decision is final.
    assert!(matches!(
        bureau.uphold_dispute(&second.id, "changed my mind").await,
        Err(ClientError::Conflict(_))
    ));

    // The bureau upholds the first dispute over HTTP: the refund reverses every line of the
    // sale to the fen.
    assert!(matches!(
        buyer.uphold_dispute(&dispute_id, "self-service").await,
        Err(ClientError::Forbidden(_))
    ));
    let upheld = bureau
        .uphold_dispute(&dispute_id, "confirmed: Taiyuan is missing")
        .await
        .expect("upheld");
    assert_eq!(upheld.state, "upheld");
    let refund_id = upheld.refund_posting_id.expect("a refund posting");
    let postings = ledger::postings(fixture.store.conn(), None).expect("postings");
    let sale = posting_of(&postings, "purchase", &bought.id);
    let refund = posting_of(&postings, "dispute", &dispute_id);
    assert_eq!(refund.id, refund_id);
    assert_reverses(&refund, &sale);
    let credits: BTreeMap<&str, i64> = refund
        .lines
        .iter()
        .map(|l| (l.account.as_str(), l.credit.0 - l.debit.0))
        .collect();
    assert_eq!(credits["buyer:buyer-1"], 1_001);
    assert_eq!(credits["operator:op-test"], -400);
    assert_eq!(credits["platform"], -201);
    assert_eq!(credits.values().sum::<i64>(), 0);
    // Refunded once: the purchase cannot be disputed again.
    let after = buyer.open_dispute(&product, "again").await;
    assert!(
        matches!(&after, Err(ClientError::Conflict(m)) if m.contains("already refunded")),
        "{after:?}"
    );

    // The other buyer disputes again (a rejected dispute does not bar a new one); the bureau
    // upholds it with `veil dispute uphold` in the next month, so its refund belongs there.
    let third = other_buyer
        .open_dispute(&product, "the rows do not add up")
        .await
        .expect("opened after a rejection");
    let period = veil_runtime::clock::period_of(veil_runtime::clock::now());
    let (_, end) = veil_runtime::settlement::period_bounds(&period).expect("period");
    let next_month = end + chrono::Duration::hours(1);
    let next_period = veil_runtime::clock::period_of(next_month);
    let (_, next_end) = veil_runtime::settlement::period_bounds(&next_period).expect("period");
    let cli_upheld = veil(
        &store,
        Some(next_month),
        &[
            "dispute",
            "uphold",
            &third.id,
            "--reason",
            "confirmed on re-run",
        ],
    );
    assert_eq!(cli_upheld.code, Some(0), "{cli_upheld}");
    assert!(cli_upheld.stdout.contains("upheld"), "{cli_upheld}");
    let listed = veil(&store, None, &["dispute", "list", "--json"]);
    assert_eq!(listed.code, Some(0), "{listed}");
    let listed: Value = serde_json::from_str(&listed.stdout).expect("json");
    assert_eq!(listed.as_array().expect("list").len(), 3);

    // Settle both months with processes whose clock is past each month's end.
    for (settled_period, clock) in [
        (&period, end + chrono::Duration::hours(2)),
        (&next_period, next_end + chrono::Duration::hours(1)),
    ] {
        let run = veil(
            &store,
            Some(clock),
            &["settle", "--period", settled_period, "--json"],
        );
        assert_eq!(run.code, Some(0), "{run}");
    }

    // The sale's month: the run's lines remain; the first sale and its refund net to zero for
    // every party; the refund's lines name the sale they reverse.
    let month_dir = store.join("statements").join(&period);
    let mut parties = 0;
    for file in std::fs::read_dir(&month_dir).expect("statements") {
        let path = file.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let statement: Value =
                serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
            assert_eq!(
                net_for_purchase(&statement, &bought.id),
                0,
                "{}",
                path.display()
            );
            parties += 1;
        }
    }
    assert_eq!(parties, 3, "the platform, the operator and the provider");
    let operator_statement = statement_file(&store, &period, "operator:op-test");
    let lines = operator_statement["lines"].as_array().expect("lines");
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "run" && l["debit"] == 250),
        "{operator_statement}"
    );
    let refund_line = lines
        .iter()
        .find(|l| l["kind"] == "refund")
        .expect("a refund line");
    assert_eq!(refund_line["source_kind"], "dispute");
    assert_eq!(refund_line["source_id"], dispute_id.as_str());
    assert_eq!(refund_line["reverses_purchase_id"], bought.id.as_str());
    assert_eq!(refund_line["reverses_posting_id"], sale.id);
    assert_eq!(refund_line["debit"], 400);
    // Run −250, two sales +800, one refund −400.
    assert_eq!(operator_statement["net"], 150);
    let platform = statement_file(&store, &period, "platform");
    assert_eq!(
        platform["summary"]["total_debit"], platform["summary"]["total_credit"],
        "the month balances"
    );
    // Run +250, two sales +402, one refund −201.
    assert_eq!(platform["net"], 250 + 201);

    // The next month holds the second refund, naming the sale of the month before.
    let next_platform = statement_file(&store, &next_period, "platform");
    assert_eq!(
        next_platform["summary"]["total_debit"],
        next_platform["summary"]["total_credit"]
    );
    assert_eq!(next_platform["summary"]["postings"], 1);
    assert_eq!(next_platform["summary"]["refunds"], 1);
    assert_eq!(next_platform["net"], -201);
    let other_sale = posting_of(&postings, "purchase", &other_bought.id);
    let next_operator = statement_file(&store, &next_period, "operator:op-test");
    let next_line = &next_operator["lines"][0];
    assert_eq!(next_line["kind"], "refund");
    assert_eq!(next_line["source_id"], third.id.as_str());
    assert_eq!(next_line["reverses_purchase_id"], other_bought.id.as_str());
    assert_eq!(next_line["reverses_posting_id"], other_sale.id);
    assert_eq!(next_operator["net"], -400);
    let csv = std::fs::read_to_string(veil_runtime::settlement::existing_file(
        &store.join("statements").join(&next_period),
        &ledger::Account::Operator("op-test".into()),
        "csv",
    ))
    .expect("csv");
    assert!(
        csv.starts_with(veil_runtime::settlement::CSV_HEADER),
        "{csv}"
    );
    assert!(
        csv.lines().any(|l| l.contains(",refund,dispute,")
            && l.ends_with(&format!(",{},{}", other_bought.id, other_sale.id))),
        "{csv}"
    );
    // Both refunds reverse their sales, so the provider has earned nothing from them.
    let all = ledger::postings(fixture.store.conn(), None).expect("postings");
    assert_reverses(&posting_of(&all, "dispute", &third.id), &other_sale);

    // The audit log agrees with the ledger, refunds included.
    let verified = veil(&store, None, &["audit", "verify"]);
    assert_eq!(verified.code, Some(0), "{verified}");
    // A run, two sales, two refunds.
    assert!(verified.stdout.contains("5 ledger postings"), "{verified}");

    // And it reads the refunds: one fen taken off a refund line is named.
    let db = rusqlite::Connection::open(store.join("veil.db")).expect("open veil.db");
    db.execute_batch("DROP TRIGGER ledger_lines_no_update;")
        .expect("drop trigger");
    db.execute(
        "UPDATE ledger_lines SET credit_fen = credit_fen - 1 WHERE posting_id = ?1 AND credit_fen > 0",
        [refund_id],
    )
    .expect("edit");
    let broken = veil(&store, None, &["audit", "verify"]);
    assert_eq!(broken.code, Some(5), "{broken}");
    assert!(
        broken.stdout.contains(&format!(
            "ledger posting {refund_id} (dispute {dispute_id})"
        )),
        "{broken}"
    );
}

/// In the browser: the buyer disputes a purchase from its purchases page, the bureau upholds it
/// on its disputes page, and the buyer sees the refund.
#[tokio::test(flavor = "multi_thread")]
async fn a_buyer_disputes_in_the_console_and_the_bureau_upholds_it_there() {
    use crate::console::{
        ONE_BROWSER, check_page, click, sign_in, sign_out, start_browser, type_into,
    };

    let _one = ONE_BROWSER.lock().await;
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 1);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let buyer = Client::new(&server.url, &keys.buyer).expect("client");
    let template = approved_template(
        &operator,
        &bureau,
        &persons_by_city(false),
        ApproveTemplate {
            epsilon: Some(1.0),
            k: Some(5),
            ..Default::default()
        },
    )
    .await;
    let product = released_product(&operator, &template).await;
    operator.list_for_sale(&product, 500).await.expect("listed");
    let bought = buyer.purchase(&product).await.expect("bought");
    let url = &server.url;

    let browser = start_browser().await;
    sign_in(&browser, url, &keys.buyer).await;
    browser
        .goto(&format!("{url}/console/purchases"))
        .await
        .expect("purchases");
    check_page(&browser, "buyer-purchases-dispute").await;
    type_into(
        &browser,
        &format!("#dispute-{}", bought.id),
        "<b>no rows</b> for 太原",
    )
    .await;
    click(&browser, &format!("#dispute-button-{}", bought.id)).await;
    browser
        .wait_for("#purchases .state-open", Duration::from_secs(20))
        .await
        .expect("the purchase shows its open dispute");
    // While it is open the purchase offers no second dispute form.
    assert!(
        browser
            .find(&format!("#dispute-{}", bought.id))
            .await
            .is_err()
    );
    sign_out(&browser).await;

    sign_in(&browser, url, &keys.bureau).await;
    browser
        .goto(&format!("{url}/console/bureau/disputes"))
        .await
        .expect("disputes page");
    check_page(&browser, "bureau-disputes").await;
    let source = browser.source().await.expect("source");
    // The buyer's words are shown as text, never as markup.
    assert!(
        source.contains("&lt;b&gt;no rows&lt;/b&gt; for 太原"),
        "{source}"
    );
    let dispute = bureau.disputes().await.expect("disputes").remove(0);
    type_into(
        &browser,
        &format!("#uphold-{}", dispute.id),
        "confirmed: Taiyuan is missing",
    )
    .await;
    click(&browser, &format!("#uphold-button-{}", dispute.id)).await;
    browser
        .wait_for("#disputes .state-upheld", Duration::from_secs(20))
        .await
        .expect("the dispute shows as upheld");
    let decided = bureau.disputes().await.expect("disputes").remove(0);
    assert_eq!(decided.state, "upheld");
    let refund = decided.refund_posting_id.expect("a refund posting");
    assert!(
        browser
            .source()
            .await
            .expect("source")
            .contains(&format!("refund: ledger posting {refund}"))
    );
    sign_out(&browser).await;

    sign_in(&browser, url, &keys.buyer).await;
    browser
        .goto(&format!("{url}/console/purchases"))
        .await
        .expect("purchases");
    let source = browser.source().await.expect("source");
    assert!(source.contains("refunded"), "{source}");
    assert!(source.contains("confirmed: Taiyuan is missing"), "{source}");
    browser.close().await.expect("closed");
}
