//! The asset register (issue 16, part 1), through the `veil` binary and HTTP: each dataset's
//! card and the register export, whose money figures are the ledger's.

use std::process::Command;

use veil_runtime::catalog;
use veil_runtime::ids::{Fen, ProductId};
use veil_runtime::jobs::JobOutcome;
use veil_runtime::ledger::{self, Account};
use veil_runtime::market;
use veil_runtime::principals::{self, Role};

use crate::serve::{Server, add_principals};
use crate::support::{Fixture, OPERATOR, approval, veil_bin};

const SQL: &str =
    "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY city";

/// What the ledger's own postings say `provider` earned from `dataset_id`, summed here line
/// by line rather than by the register's query.
fn ledger_earnings(store: &veil_runtime::store::Store, provider: &str, dataset_id: &str) -> i64 {
    let account = Account::Provider(provider.to_string()).as_text();
    ledger::postings(store.conn(), None)
        .expect("postings")
        .iter()
        .flat_map(|p| p.lines.iter())
        .filter(|l| l.account == account && l.dataset_id.as_deref() == Some(dataset_id))
        .map(|l| l.credit.0 - l.debit.0)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_register_export_values_each_dataset_from_the_ledger() {
    let mut fixture = Fixture::new(2_000);
    let keys = add_principals(&mut fixture);
    let social = catalog::get(&fixture.store, "social_insurance").expect("dataset");
    let provider = social.policy.provider.clone();
    let provider_key = principals::add(&mut fixture.store, Role::Provider, &provider)
        .expect("provider")
        .1
        .expose()
        .to_string();
    let store_dir = fixture.store_path();

    // The bureau capitalises at 20 %: a value of five years' revenue.
    let set = Command::new(veil_bin())
        .args([
            "price",
            "set",
            "--per-million-rows-fen",
            "0",
            "--provider-bp",
            "4000",
            "--platform-bp",
            "2000",
            "--operator-bp",
            "4000",
            "--capitalisation-rate-bp",
            "2000",
            "--data-dir",
        ])
        .arg(&store_dir)
        .output()
        .expect("veil price set");
    assert!(set.status.success(), "{set:?}");

    // One run and one sale of its product at ¥10.01: the provider's share is 40 % (¥4.00).
    let outcome = fixture.run_sql(SQL, &[], approval()).await.expect("ran");
    let JobOutcome::Released { product_id, .. } = outcome else {
        panic!("released: {outcome:?}");
    };
    market::list_for_sale(
        &mut fixture.store,
        Role::Operator,
        OPERATOR,
        &ProductId::new(product_id.as_str()),
        Fen(1_001),
    )
    .expect("listed");
    market::purchase(
        &mut fixture.store,
        "buyer-1",
        &ProductId::new(product_id.as_str()),
    )
    .expect("bought");
    let earned = ledger_earnings(&fixture.store, &provider, social.id.as_str());
    assert_eq!(earned, 400);

    // The export: one row per dataset, figures from the ledger.
    let out = fixture.dir.path().join("finance");
    let exported = Command::new(veil_bin())
        .args(["dataset", "register-export", "--out"])
        .arg(&out)
        .arg("--data-dir")
        .arg(&store_dir)
        .output()
        .expect("veil dataset register-export");
    assert!(exported.status.success(), "{exported:?}");
    let csv = std::fs::read_to_string(out.join("asset-register.csv")).expect("csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "one row per dataset");
    let row = rows
        .iter()
        .find(|r| r[column("name")] == "social_insurance")
        .expect("the social insurance row");
    assert_eq!(row[column("provider_revenue_fen")], earned.to_string());
    assert_eq!(row[column("trailing_revenue_fen")], earned.to_string());
    assert_eq!(row[column("capitalisation_rate_bp")], "2000");
    assert_eq!(
        row[column("value_fen")],
        (earned * 10_000 / 2_000).to_string()
    );
    assert_eq!(row[column("jobs")], "1");
    assert_eq!(row[column("products")], "1");
    assert_eq!(row[column("versions")], "1");
    assert_eq!(row[column("grants")], "1");
    let other = rows
        .iter()
        .find(|r| r[column("name")] == "enterprise_registry")
        .expect("the registry row");
    assert_eq!(
        other[column("value_fen")],
        "0",
        "a dataset nobody used earned nothing"
    );
    let json: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("asset-register.json")).expect("json"))
            .expect("JSON");
    assert_eq!(json.len(), 2);

    // The card, locally and over HTTP: the bureau and the dataset's provider read it; an
    // operator may not.
    let card = Command::new(veil_bin())
        .args(["dataset", "card", "social_insurance", "--data-dir"])
        .arg(&store_dir)
        .output()
        .expect("veil dataset card");
    assert!(card.status.success(), "{card:?}");
    let text = String::from_utf8_lossy(&card.stdout);
    assert!(text.contains("value           ¥20.00 at 2000 bp"), "{text}");
    let server = Server::start(&store_dir, 1);
    let http = reqwest::Client::new();
    let get = |key: &str, path: &str| {
        http.get(format!("{}{path}", server.url))
            .bearer_auth(key)
            .send()
    };
    let bureau: serde_json::Value = get(&keys.bureau, "/v1/datasets/social_insurance/card")
        .await
        .expect("answer")
        .json()
        .await
        .expect("card");
    assert_eq!(bureau["value_fen"], 2_000);
    assert_eq!(bureau["provider_revenue_fen"], earned);
    assert_eq!(bureau["products"][0], product_id.as_str());
    let own = get(&provider_key, "/v1/datasets/social_insurance/card")
        .await
        .expect("answer");
    assert_eq!(own.status(), reqwest::StatusCode::OK);
    let theirs = get(&provider_key, "/v1/datasets/enterprise_registry/card")
        .await
        .expect("answer");
    assert_eq!(
        theirs.status(),
        reqwest::StatusCode::NOT_FOUND,
        "another provider's"
    );
    let operator = get(&keys.operator, "/v1/datasets/social_insurance/card")
        .await
        .expect("answer");
    assert_eq!(operator.status(), reqwest::StatusCode::FORBIDDEN);
    let register = get(&keys.bureau, "/v1/asset-register?format=csv")
        .await
        .expect("answer")
        .text()
        .await
        .expect("csv");
    assert!(register.starts_with(veil_runtime::assets::REGISTER_CSV_HEADER));
    assert!(
        register.contains(&format!(",{earned},{earned},2000,2000,")),
        "{register}"
    );
}
