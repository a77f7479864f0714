//! What each role may read before it acts, end to end over HTTP on 127.0.0.1: an operator
//! reads a granted dataset's schema before writing SQL, the bureau reads the registration's
//! quality report, and a buyer reads a listing card and the signed manifest before buying —
//! through `veil_sdk::client::Client` and the `veil client` commands.

use std::process::Command;

use veil_runtime::catalog::{self, Policy, RegisterOptions};
use veil_runtime::principals::{self, Role};
use veil_runtime::templates::TemplateSpec;
use veil_sdk::api::ApproveTemplate;
use veil_sdk::client::{Client, ClientError};

use crate::serve::{Server, add_principals, released_product};
use crate::support::{Fixture, SOCIAL_POLICY, veil_bin};

const PROVIDER: &str = "Shanxi Provincial Department of Human Resources and Social Security";
/// Districts of Taiyuan, the largest city: values of the quasi column `district`, which has
/// no public key set, so they are in-domain values no schema may show.
const TAIYUAN_DISTRICTS: [&str; 3] = ["Xiaodian", "Yingze", "Xinghualing"];

fn add(fixture: &mut Fixture, role: Role, name: &str) -> String {
    principals::add(&mut fixture.store, role, name)
        .expect("principal")
        .1
        .expose()
        .to_string()
}

/// `veil client ARGS` against `server` with `key`: (exit code, stdout, stderr).
fn veil_client(server: &Server, key: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(veil_bin())
        .arg("client")
        .args(args)
        .env("VEIL_URL", &server.url)
        .env("VEIL_TOKEN", key)
        .output()
        .expect("veil client runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_with_a_grant_reads_a_datasets_schema_and_no_one_else_does() {
    let mut fixture = Fixture::new(2_000);
    let keys = add_principals(&mut fixture);
    let other_key = add(&mut fixture, Role::Operator, "op-without-grant");
    let provider_key = add(&mut fixture, Role::Provider, PROVIDER);
    let server = Server::start(&fixture.store_path(), 1);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let policy = Policy::parse(SOCIAL_POLICY).expect("policy");

    // By name and by id, the same schema: every column of the file with its type and the
    // policy's role, bounds and key set.
    let schema = operator.dataset("social_insurance").await.expect("schema");
    assert_eq!(
        operator.dataset(&schema.id).await.expect("by id"),
        schema,
        "an id names the same dataset as its name"
    );
    assert_eq!(schema.privacy_unit, "person_id");
    assert_eq!(schema.unit_kind, "person");
    assert_eq!(schema.acquired_on, policy.acquired_on);
    assert_eq!(schema.provider, PROVIDER);
    assert_eq!(schema.sharing, "conditional");
    assert_eq!(schema.rows, 2_000);
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let mut expected: Vec<&str> = policy.columns.keys().map(String::as_str).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "every column of the policy, once");
    assert_eq!(names[0], "record_id", "in the file's order");
    let column = |name: &str| {
        schema
            .columns
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("column {name}"))
    };
    assert_eq!(column("person_id").role, "identifier");
    assert_eq!(column("person_id").data_type, "Int64");
    assert_eq!(column("city").role, "quasi");
    assert_eq!(column("city").data_type, "Utf8");
    assert_eq!(
        column("city").keys,
        policy.columns["city"].keys,
        "the public key set, whole"
    );
    assert_eq!(column("monthly_income").role, "sensitive");
    assert_eq!(column("monthly_income").bounds, Some(vec![0.0, 100_000.0]));
    assert_eq!(column("district").keys, None, "district has no key set");
    // Nothing from inside the data: not one district, although every row has one.
    let text = serde_json::to_string(&schema).expect("json");
    for district in TAIYUAN_DISTRICTS {
        assert!(!text.contains(district), "{district} leaked: {text}");
    }

    // An operator without a grant is told the dataset does not exist, as for a missing one;
    // a buyer's role may not read schemas at all.
    let other = Client::new(&server.url, &other_key).expect("client");
    let refused = other.dataset("social_insurance").await;
    let Err(ClientError::NotFound(message)) = &refused else {
        panic!("an operator without a grant: {refused:?}");
    };
    assert!(message.contains("veil client datasets"), "{message}");
    assert!(matches!(
        other.dataset("no_such_table").await,
        Err(ClientError::NotFound(_))
    ));
    let buyer = Client::new(&server.url, &keys.buyer).expect("client");
    assert!(matches!(
        buyer.dataset("social_insurance").await,
        Err(ClientError::Forbidden(_))
    ));
    // The provider reads its own dataset, not another provider's.
    let provider = Client::new(&server.url, &provider_key).expect("client");
    assert_eq!(
        provider.dataset("social_insurance").await.expect("own").id,
        schema.id
    );
    assert!(matches!(
        provider.dataset("enterprise_registry").await,
        Err(ClientError::NotFound(_))
    ));

    // The command line prints the same schema; its JSON is the wire type.
    let (code, out, err) = veil_client(
        &server,
        &keys.operator,
        &["dataset", "show", "social_insurance"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("privacy unit:    person_id (person)"), "{out}");
    assert!(
        out.contains(&format!("acquired on:     {}", policy.acquired_on)),
        "{out}"
    );
    let income = out
        .lines()
        .find(|l| l.starts_with("monthly_income"))
        .expect("a row for monthly_income");
    assert!(
        income.contains("Float64") || income.contains("Int64"),
        "{income}"
    );
    assert!(
        income.contains("sensitive") && income.contains("0 – 100000"),
        "{income}"
    );
    let city = out.lines().find(|l| l.starts_with("city")).expect("city");
    assert!(
        city.contains("Taiyuan") && city.contains("Lvliang"),
        "{city}"
    );
    let (code, out, err) = veil_client(
        &server,
        &keys.operator,
        &["--json", "dataset", "show", &schema.id],
    );
    assert_eq!(code, 0, "{out}{err}");
    let json: veil_sdk::api::DatasetSchema = serde_json::from_str(&out).expect("json");
    assert_eq!(json, schema);
    let (code, out, err) = veil_client(
        &server,
        &other_key,
        &["dataset", "show", "social_insurance"],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bureau_reads_a_quality_report_that_operators_and_buyers_cannot() {
    let mut fixture = Fixture::new(2_000);
    let keys = add_principals(&mut fixture);
    // The bureau registers the same file again under a policy with a misspelt key, knowingly:
    // the report names the real value outside the set and its nearest key.
    let typo = SOCIAL_POLICY.replace("\"Taiyuan\"", "\"Taiyaun\"");
    catalog::register_with(
        &mut fixture.store,
        "social_insurance_typo",
        &fixture.dir.path().join("raw/social_insurance.parquet"),
        Policy::parse(&typo).expect("policy"),
        RegisterOptions {
            accept_quality_issues: true,
            ..Default::default()
        },
    )
    .expect("registered with its issues accepted");
    let server = Server::start(&fixture.store_path(), 1);
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");

    let report = bureau
        .dataset_quality("social_insurance_typo")
        .await
        .expect("the bureau reads the report");
    assert_eq!(report["rows"], 2_000);
    assert_eq!(report["issues_accepted"], true);
    assert_eq!(report["unit"]["column"], "person_id");
    let city = report["key_sets"]
        .as_array()
        .expect("key sets")
        .iter()
        .find(|k| k["column"] == "city")
        .expect("the city's key set");
    assert_eq!(city["outside"][0]["value"], "Taiyuan");
    assert_eq!(city["outside"][0]["nearest_key"], "Taiyaun");

    // The report quotes in-domain values: an operator (even one granted the dataset) and a
    // buyer are refused by role, and the refusal quotes none of it.
    for key in [&keys.operator, &keys.buyer] {
        let client = Client::new(&server.url, key).expect("client");
        let refused = client.dataset_quality("social_insurance_typo").await;
        let Err(ClientError::Forbidden(message)) = &refused else {
            panic!("not the bureau: {refused:?}");
        };
        assert!(message.contains("bureau"), "{message}");
        assert!(!message.contains("Taiyuan"), "{message}");
    }
    let raw = reqwest::Client::new()
        .get(format!(
            "{}/v1/datasets/social_insurance_typo/quality",
            server.url
        ))
        .bearer_auth(&keys.operator)
        .send()
        .await
        .expect("answer");
    assert_eq!(raw.status(), 403);

    // The command line prints the bureau's report as `veil dataset show` does.
    let (code, out, err) = veil_client(
        &server,
        &keys.bureau,
        &["dataset", "quality", "social_insurance_typo"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2000 rows checked"), "{out}");
    assert!(out.contains("Taiyuan") && out.contains("Taiyaun"), "{out}");
    let (code, out, err) = veil_client(
        &server,
        &keys.bureau,
        &["--json", "dataset", "quality", "social_insurance_typo"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json, report);
    let (code, out, err) = veil_client(
        &server,
        &keys.operator,
        &["dataset", "quality", "social_insurance_typo"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("bureau") && !out.contains("Taiyuan"),
        "{out}{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buyer_reads_the_listing_card_and_verifies_the_manifest_before_buying() {
    let mut fixture = Fixture::new(2_000);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 1);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let buyer = Client::new(&server.url, &keys.buyer).expect("client");

    let template = operator
        .submit_template(&TemplateSpec {
            name: "persons_by_city".into(),
            sql: "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY city".into(),
            params: Vec::new(),
            wasm: None,
            versions: Default::default(),
        })
        .await
        .expect("submitted");
    bureau
        .approve_template(
            &template.id,
            &ApproveTemplate {
                epsilon: Some(0.75),
                k: Some(5),
                ..Default::default()
            },
        )
        .await
        .expect("approved");
    let product = released_product(&operator, &template.id).await;

    // Not offered: no card, for the buyer or its own operator.
    assert!(matches!(
        buyer.offer(&product).await,
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        operator.offer(&product).await,
        Err(ClientError::NotFound(_))
    ));
    operator
        .list_for_sale(&product, 1_001)
        .await
        .expect("listed");

    // Before buying: the card, every figure from the signed manifest, which verifies with
    // the platform key; the result files stay closed.
    let card = buyer.offer(&product).await.expect("the card");
    let key = buyer.platform_key().await.expect("key");
    let public = veil_runtime::keys::parse_public(&key.public_key_hex).expect("key");
    veil_sdk::manifest::verify_signature(&card.manifest, Some(&public))
        .expect("the manifest verifies with the platform key");
    let m = &card.manifest.manifest;
    assert_eq!(card.product_id, product);
    assert_eq!(card.price_fen, 1_001);
    assert_eq!(card.template_name, "persons_by_city");
    assert_eq!(card.template_id, template.id);
    assert_eq!(card.purpose, "integration tests", "the grant's purpose");
    assert_eq!(card.epsilon, 0.75);
    assert_eq!(card.k, 5);
    assert_eq!(card.delta, m.privacy.delta);
    assert_eq!(card.rows, m.rows);
    assert_eq!(card.released_at, m.created_at);
    assert_eq!(card.sources, m.sources);
    assert_eq!(card.sources.len(), 1);
    assert_eq!(card.sources[0].name, "social_insurance");
    assert_eq!(card.sources[0].acquired_on, "2026-10-31");
    let columns: Vec<(&str, &str)> = card
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.data_type.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("city", "Utf8View"),
            ("persons", "Int64"),
            ("persons_ci_low", "Int64"),
            ("persons_ci_high", "Int64")
        ]
    );
    assert_eq!(card.columns[0].kind, "group key");
    assert!(
        card.columns[1].kind.starts_with("noisy count"),
        "{:?}",
        card.columns[1]
    );
    // A card whose figures were changed no longer verifies.
    let mut forged = card.manifest.clone();
    forged.manifest.rows += 1;
    assert!(veil_sdk::manifest::verify_signature(&forged, Some(&public)).is_err());
    assert!(matches!(
        buyer
            .download_product(&product, &fixture.dir.path().join("early"), |_, _| {})
            .await,
        Err(ClientError::Forbidden(_))
    ));

    // The command line shows the card after checking the signature.
    let (code, out, err) = veil_client(&server, &keys.buyer, &["offer", "show", &product]);
    assert_eq!(code, 0, "{out}{err}");
    for expected in [
        "¥10.01",
        "persons_by_city",
        "purpose:    integration tests",
        "acquired 2026-10-31",
        "ε 0.75",
        "k 5",
        "signature verified with the platform key",
    ] {
        assert!(out.contains(expected), "{expected} in {out}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("persons") && l.contains("Int64") && l.contains("noisy count")),
        "{out}"
    );
    let (code, out, err) =
        veil_client(&server, &keys.buyer, &["--json", "offer", "show", &product]);
    assert_eq!(code, 0, "{out}{err}");
    let json: veil_sdk::api::OfferCard = serde_json::from_str(&out).expect("json");
    assert_eq!(json, card);

    // Then the buyer buys: the download's manifest is the one the card showed, and the files
    // are the ones it lists.
    buyer.purchase(&product).await.expect("bought");
    let out = fixture.dir.path().join("bought");
    buyer
        .download_product(&product, &out, |_, _| {})
        .await
        .expect("download");
    let verified =
        veil_sdk::manifest::verify_product_dir(&out, Some(&public)).expect("verifies offline");
    assert_eq!(&verified.manifest, m);

    // A recalled product is no longer offered: it has no card.
    bureau
        .recall(&product, "a defect was found in the source data")
        .await
        .expect("recalled");
    assert!(matches!(
        buyer.offer(&product).await,
        Err(ClientError::NotFound(_))
    ));
    let (code, _, err) = veil_client(&server, &keys.buyer, &["offer", "show", &product]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not for sale"), "{err}");
}
