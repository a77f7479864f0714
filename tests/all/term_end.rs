//! The end of a grant's term (issue 16, part 4), through the `veil` binary and HTTP: the grant
//! states who owns its products (printed in every manifest), and its disposition runs once
//! after the term — `destroy` takes its products off sale and deletes their result files
//! while manifests, purchases and the ledger stay balanced; `archive` takes them off sale for
//! good and buyers keep what they bought.

use std::process::Command;

use chrono::Days;
use veil_runtime::grants::{self, Disposition, GrantRequest, Ownership};
use veil_runtime::ids::{Fen, ProductId};
use veil_runtime::jobs::{self, JobOutcome, JobRequest};
use veil_runtime::market;
use veil_runtime::principals::Role;

use crate::serve::{Server, add_principals};
use crate::support::{Fixture, OPERATOR, approval, submit_and_approve, veil_bin};

const SQL: &str = "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance WHERE birth_year >= :born GROUP BY city";

/// A grant of `social_insurance` to the operator ending in five days.
fn short_grant(fixture: &mut Fixture, disposition: Disposition, ownership: Ownership) -> String {
    let today = veil_runtime::clock::today();
    grants::create(
        &mut fixture.store,
        GrantRequest {
            operator: OPERATOR.into(),
            datasets: vec!["social_insurance".into()],
            purpose: format!("a short study ({})", disposition.as_str()),
            valid_from: today - Days::new(10),
            valid_to: today + Days::new(5),
            epsilon_per_month: 10.0,
            delta_per_month: 0.5,
            disposition,
            ownership,
        },
    )
    .expect("grant")
    .id
    .to_string()
}

/// Runs the template under `grant` with `born`, lists the product at ¥5 and has buyer-1 buy it.
async fn sold_product(fixture: &mut Fixture, template: &str, grant: &str, born: &str) -> String {
    let outcome = jobs::run(
        &mut fixture.store,
        JobRequest {
            operator: OPERATOR.into(),
            template: template.into(),
            params: vec![("born".into(), born.into())],
            grant: Some(grant.into()),
        },
    )
    .await
    .expect("ran");
    let JobOutcome::Released { product_id, .. } = outcome else {
        panic!("released: {outcome:?}");
    };
    let id = ProductId::new(product_id.as_str());
    market::list_for_sale(&mut fixture.store, Role::Operator, OPERATOR, &id, Fen(500))
        .expect("listed");
    market::purchase(&mut fixture.store, "buyer-1", &id).expect("bought");
    product_id.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destroy_grant_takes_its_products_off_sale_at_the_end_of_its_term() {
    let mut fixture = Fixture::new(2_000);
    let keys = add_principals(&mut fixture);
    let destroy = short_grant(&mut fixture, Disposition::Destroy, Ownership::Shared);
    let archive = short_grant(&mut fixture, Disposition::Archive, Ownership::Operator);
    let template = submit_and_approve(&mut fixture.store, SQL, &[("born", "1950")], approval())
        .expect("template");
    let destroyed = sold_product(&mut fixture, &template, &destroy, "1950").await;
    let archived = sold_product(&mut fixture, &template, &archive, "1960").await;
    let store_dir = fixture.store_path();
    let product_dir = store_dir.join("products").join(&destroyed);
    let manifest = veil_sdk::manifest::read_manifest(&product_dir).expect("manifest");
    assert_eq!(
        manifest.manifest.ownership.as_deref(),
        Some("shared"),
        "the grant's ownership"
    );

    // Before the term ends nothing happens.
    let early = Command::new(veil_bin())
        .args(["grant", "dispose", "--json", "--data-dir"])
        .arg(&store_dir)
        .output()
        .expect("veil grant dispose");
    assert!(early.status.success(), "{early:?}");
    assert_eq!(String::from_utf8_lossy(&early.stdout).trim(), "[]");

    // A week later both terms have ended: each disposition runs once.
    let later = veil_runtime::clock::format(veil_runtime::clock::now() + chrono::Duration::days(7));
    let dispose = || {
        Command::new(veil_bin())
            .args(["grant", "dispose", "--json", "--data-dir"])
            .arg(&store_dir)
            .env("VEIL_CLOCK", &later)
            .output()
            .expect("veil grant dispose")
    };
    let ran = dispose();
    assert!(ran.status.success(), "{ran:?}");
    let done: Vec<serde_json::Value> = serde_json::from_slice(&ran.stdout).expect("JSON");
    assert_eq!(done.len(), 2, "{done:?}");
    let again = dispose();
    let done: Vec<serde_json::Value> = serde_json::from_slice(&again.stdout).expect("JSON");
    assert!(done.is_empty(), "a disposition runs once");

    // Neither product is on sale any more, and neither can be offered again.
    let offers = market::offers(fixture.store.conn()).expect("offers");
    assert!(
        offers
            .iter()
            .all(|l| l.product_id != destroyed && l.product_id != archived)
    );
    for product in [&destroyed, &archived] {
        let relisted = market::list_for_sale(
            &mut fixture.store,
            Role::Bureau,
            "bureau",
            &ProductId::new(product.as_str()),
            Fen(500),
        );
        assert!(relisted.is_err(), "{product} cannot be sold again");
    }
    // The destroyed product's result files are gone; its manifest stays and still verifies.
    let left: Vec<String> = std::fs::read_dir(&product_dir)
        .expect("folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["manifest.json"]);
    let key = veil_runtime::keys::load(&store_dir.join("keys/platform.ed25519")).expect("key");
    veil_sdk::manifest::verify_signature(
        &veil_sdk::manifest::read_manifest(&product_dir).expect("manifest"),
        Some(&key.verifying_key()),
    )
    .expect("the manifest still verifies");

    // The buyer: the destroyed product's data cannot be downloaded (its manifest can); the
    // archived one it bought still can.
    let server = Server::start_in(&store_dir, 1, &[], &[("VEIL_CLOCK", &later)]);
    let http = reqwest::Client::new();
    let get = |path: String| {
        http.get(format!("{}{path}", server.url))
            .bearer_auth(&keys.buyer)
            .send()
    };
    let gone = get(format!("/v1/products/{destroyed}/files/result.parquet"))
        .await
        .expect("answer");
    assert_eq!(gone.status(), reqwest::StatusCode::CONFLICT);
    assert!(gone.text().await.expect("body").contains("destroyed"));
    let manifest = get(format!("/v1/products/{destroyed}/files/manifest.json"))
        .await
        .expect("answer");
    assert_eq!(manifest.status(), reqwest::StatusCode::OK);
    let kept = get(format!("/v1/products/{archived}/files/result.parquet"))
        .await
        .expect("answer");
    assert_eq!(kept.status(), reqwest::StatusCode::OK);
    drop(server);

    // The ledger stays balanced and the audit log, products included, verifies.
    let postings = veil_runtime::ledger::postings(fixture.store.conn(), None).expect("ledger");
    assert!(!postings.is_empty());
    assert!(postings.iter().all(|p| p.debits() == p.credits()));
    let verified = Command::new(veil_bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(&store_dir)
        .env("VEIL_CLOCK", &later)
        .output()
        .expect("veil audit verify");
    assert!(verified.status.success(), "{verified:?}");
}
