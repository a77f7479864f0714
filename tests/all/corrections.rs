//! Correction requests (issue 16, part 3), through HTTP and the `veil` binary: a buyer reports
//! an error in a product; the provider has ten working days (the clock pinned past them flags
//! the request overdue); accepting it names the version that corrects the data, and the
//! buyer's purchase of the product made from the old version is then marked superseded.

use std::process::Command;

use veil_runtime::catalog;
use veil_runtime::principals::{self, Role};
use veil_sdk::api::ApproveTemplate;
use veil_sdk::client::Client;

use crate::serve::{Server, add_principals, approved_template, persons_by_city, released_product};
use crate::support::{Fixture, veil_bin};

#[tokio::test(flavor = "multi_thread")]
async fn a_buyers_request_goes_overdue_then_a_new_version_supersedes_its_product() {
    let mut fixture = Fixture::new(2_000);
    let keys = add_principals(&mut fixture);
    let provider_name = catalog::get(&fixture.store, "social_insurance")
        .expect("dataset")
        .policy
        .provider;
    let provider_key = principals::add(&mut fixture.store, Role::Provider, &provider_name)
        .expect("provider")
        .1
        .expose()
        .to_string();
    let store_dir = fixture.store_path();
    let server = Server::start(&store_dir, 1);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
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
    let buyer = Client::new(&server.url, &keys.buyer).expect("client");
    buyer.purchase(&product).await.expect("bought");

    let http = reqwest::Client::new();
    let post = |key: &str, path: &str, body: serde_json::Value| {
        http.post(format!("{}{path}", server.url))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    // Refused: an empty text, a text too long to be words about an error, a product the
    // buyer did not buy (as if it did not exist).
    let empty = post(
        &keys.buyer,
        "/v1/corrections",
        serde_json::json!({ "product": product, "text": " " }),
    )
    .await
    .expect("answer");
    assert_eq!(empty.status(), reqwest::StatusCode::BAD_REQUEST);
    let long = post(
        &keys.buyer,
        "/v1/corrections",
        serde_json::json!({ "product": product, "text": "x".repeat(2_001) }),
    )
    .await
    .expect("answer");
    assert_eq!(long.status(), reqwest::StatusCode::BAD_REQUEST);
    let not_bought = post(
        &keys.buyer,
        "/v1/corrections",
        serde_json::json!({ "product": "prod-0000000000000000", "text": "wrong" }),
    )
    .await
    .expect("answer");
    assert_eq!(not_bought.status(), reqwest::StatusCode::NOT_FOUND);
    let filed: serde_json::Value = post(
        &keys.buyer,
        "/v1/corrections",
        serde_json::json!({ "product": product, "text": "Datong's count looks a year behind" }),
    )
    .await
    .expect("answer")
    .json()
    .await
    .expect("filed");
    let id = filed["id"].as_str().expect("id").to_string();
    assert_eq!(filed["state"], "open");
    assert_eq!(filed["overdue"], false);
    drop(server);

    // Three weeks later nobody has answered: more than ten working days, flagged overdue.
    let later =
        veil_runtime::clock::format(veil_runtime::clock::now() + chrono::Duration::days(21));
    let listed = Command::new(veil_bin())
        .args(["correction", "list", "--json", "--data-dir"])
        .arg(&store_dir)
        .env("VEIL_CLOCK", &later)
        .output()
        .expect("veil correction list");
    assert!(listed.status.success(), "{listed:?}");
    let all: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["overdue"], true, "{}", all[0]);
    assert!(all[0]["working_days_waiting"].as_u64().expect("days") > 10);

    // The provider registers the corrected data as version 2 and accepts the request with it.
    let delivery = fixture.dir.path().join("corrected");
    let made = Command::new(veil_bin())
        .args(["demo-data", "--rows", "2100", "--seed", "11", "--out"])
        .arg(&delivery)
        .output()
        .expect("demo-data");
    assert!(made.status.success(), "{made:?}");
    let updated = Command::new(veil_bin())
        .args(["dataset", "update", "social_insurance", "--file"])
        .arg(delivery.join("social_insurance.parquet"))
        .arg("--data-dir")
        .arg(&store_dir)
        .env("VEIL_CLOCK", &later)
        .output()
        .expect("veil dataset update");
    assert!(updated.status.success(), "{updated:?}");
    let server = Server::start_in(&store_dir, 1, &[], &[("VEIL_CLOCK", &later)]);
    let http = reqwest::Client::new();
    let answer = |key: String, body: serde_json::Value| {
        http.post(format!("{}/v1/corrections/{id}/answer", server.url))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let by_operator = answer(keys.operator.clone(), serde_json::json!({ "reason": "no" }))
        .await
        .expect("answer");
    assert_eq!(by_operator.status(), reqwest::StatusCode::FORBIDDEN);
    let unknown_version = answer(
        provider_key.clone(),
        serde_json::json!({ "corrected_in_version": 3, "reason": "fixed" }),
    )
    .await
    .expect("answer");
    assert_eq!(unknown_version.status(), reqwest::StatusCode::BAD_REQUEST);
    let accepted: serde_json::Value = answer(
        provider_key.clone(),
        serde_json::json!({ "corrected_in_version": 2, "reason": "Datong's 2024 records were re-extracted" }),
    )
    .await
    .expect("answer")
    .json()
    .await
    .expect("answered");
    assert_eq!(accepted["state"], "accepted");
    assert_eq!(accepted["corrected_in_version"], 2);
    let again = answer(provider_key, serde_json::json!({ "reason": "again" }))
        .await
        .expect("answer");
    assert_eq!(
        again.status(),
        reqwest::StatusCode::CONFLICT,
        "answered once"
    );

    // The buyer's purchase of the product made from version 1 is superseded.
    let buyer = Client::new(&server.url, &keys.buyer).expect("client");
    let purchases = buyer.purchases().await.expect("purchases");
    assert_eq!(purchases.len(), 1);
    assert!(purchases[0].superseded, "{:?}", purchases[0]);
    let verified = Command::new(veil_bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(&store_dir)
        .output()
        .expect("veil audit verify");
    assert!(verified.status.success(), "{verified:?}");
}
