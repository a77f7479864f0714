//! One contract for the command line, the HTTP API and the SDK: every action the API offers
//! has a `veil client` command that works against a real server on 127.0.0.1; every command
//! that prints a list or an object prints valid JSON with `--json`; exit codes mean the same
//! locally and through the client; a principal's key can be rotated (the old key answers 401,
//! the new one keeps the identity) and can expire.

use std::process::Command;

use chrono::{Datelike, Days};
use serde_json::Value;
use veil_runtime::jobs::JobOutcome;
use veil_runtime::principals::{self, Role};
use veil_runtime::templates::{self, TemplateSpec};
use veil_sdk::client::{Client, ClientError};

use crate::serve::{Keys, Server, add_principals};
use crate::support::{self, Fixture, OPERATOR, Run, veil_bin};

const PROVIDER: &str = "Shanxi Provincial Department of Human Resources and Social Security";
const BY_CITY: &str = "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance \
     WHERE year = :year GROUP BY city";

/// Runs `veil args…` with no Veil settings from the caller's environment but `env`.
fn veil(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(veil_bin());
    for (name, _) in std::env::vars() {
        if name.starts_with("VEIL_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("veil runs");
    Run::from(output)
}

/// `veil client args…` against `server` with `key`.
fn client(server: &Server, key: &str, args: &[&str]) -> Run {
    let mut all = vec!["client"];
    all.extend_from_slice(args);
    veil(&all, &[("VEIL_URL", &server.url), ("VEIL_TOKEN", key)])
}

/// Runs and insists on exit code 0; returns standard output parsed as JSON.
fn json_of(run: Run, what: &str) -> Value {
    assert_eq!(run.code, Some(0), "{what}: {run}");
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}):\n{}", run.stdout))
}

/// A store with one released product, a second approved template and a submitted one, and
/// the four roles' keys (the provider's last).
struct World {
    fixture: Fixture,
    keys: Keys,
    provider: String,
    product: String,
    approved: String,
    submitted: String,
    job: String,
}

async fn world() -> World {
    let mut fixture = Fixture::new(2_000);
    let keys = add_principals(&mut fixture);
    let provider = principals::add(&mut fixture.store, Role::Provider, PROVIDER)
        .expect("provider")
        .1
        .expose()
        .to_string();
    let outcome = fixture
        .run_sql(BY_CITY, &[("year", "2025")], support::approval())
        .await
        .expect("job");
    let JobOutcome::Released {
        product_id, job_id, ..
    } = outcome
    else {
        panic!("expected a release, got {outcome:?}");
    };
    let approved = support::submit_and_approve(
        &mut fixture.store,
        "SELECT gender, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY gender",
        &[],
        support::approval(),
    )
    .expect("approved");
    let submitted = templates::submit(
        &mut fixture.store,
        OPERATOR,
        TemplateSpec {
            name: "by_year".into(),
            sql: "SELECT year, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY year".into(),
            params: Vec::new(),
            wasm: None,
            versions: Default::default(),
        },
    )
    .expect("submitted")
    .id
    .to_string();
    World {
        fixture,
        keys,
        provider,
        product: product_id.to_string(),
        approved,
        submitted,
        job: job_id.to_string(),
    }
}

/// The month before this one (bureau time): it has ended, so it may be settled.
fn last_month() -> String {
    let first = veil_runtime::clock::today()
        .with_day(1)
        .expect("the first of the month");
    let last = first - Days::new(1);
    format!("{:04}-{:02}", last.year(), last.month())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_api_action_has_a_client_command_that_works_against_a_server() {
    let w = world().await;
    let server = Server::start(&w.fixture.store_path(), 1);
    let (bureau, operator) = (&w.keys.bureau, &w.keys.operator);
    let today = veil_runtime::clock::today();
    let (from, to) = (today.to_string(), (today + Days::new(30)).to_string());

    // Grant requests: the operator asks twice; the bureau reads one, grants it with less ε,
    // and rejects the other with a reason.
    let ask = |purpose: &str| {
        json_of(
            client(
                &server,
                operator,
                &[
                    "--json",
                    "request-grant",
                    "--datasets",
                    "social_insurance",
                    "--purpose",
                    purpose,
                    "--valid-from",
                    &from,
                    "--valid-to",
                    &to,
                    "--epsilon-per-month",
                    "2",
                ],
            ),
            "request-grant",
        )["id"]
            .as_str()
            .expect("an id")
            .to_string()
    };
    let (first, second) = (ask("labour statistics"), ask("another study"));
    let shown = client(&server, bureau, &["grant-request", "show", &first]);
    assert_eq!(shown.code, Some(0), "{shown}");
    assert!(shown.stdout.contains("labour statistics"), "{shown}");
    let approved = json_of(
        client(
            &server,
            bureau,
            &[
                "--json",
                "grant-request",
                "approve",
                &first,
                "--epsilon-per-month",
                "1",
            ],
        ),
        "grant-request approve",
    );
    assert_eq!(approved["state"], "approved", "{approved}");
    assert!(approved["grant_id"].is_string(), "{approved}");
    let rejected = client(
        &server,
        bureau,
        &[
            "grant-request",
            "reject",
            &second,
            "--reason",
            "no purpose given",
        ],
    );
    assert_eq!(rejected.code, Some(0), "{rejected}");
    let seen = json_of(
        client(
            &server,
            operator,
            &["--json", "grant-request", "show", &second],
        ),
        "grant-request show",
    );
    assert_eq!(seen["state"], "rejected", "{seen}");
    assert!(
        seen["reasons"]
            .as_str()
            .unwrap_or_default()
            .contains("no purpose given"),
        "{seen}"
    );
    // An operator may not decide.
    let forbidden = client(&server, operator, &["grant-request", "approve", &second]);
    assert_eq!(forbidden.code, Some(2), "{forbidden}");
    assert!(forbidden.stderr.contains("bureau"), "{forbidden}");

    // Templates: the bureau rejects the submitted one and revokes the approved one; the
    // operator reads why.
    let rejected = json_of(
        client(
            &server,
            bureau,
            &[
                "--json",
                "template",
                "reject",
                &w.submitted,
                "--reason",
                "too detailed",
            ],
        ),
        "template reject",
    );
    assert_eq!(rejected["state"], "rejected", "{rejected}");
    let revoked = client(
        &server,
        bureau,
        &[
            "template",
            "revoke",
            &w.approved,
            "--reason",
            "purpose ended",
        ],
    );
    assert_eq!(revoked.code, Some(0), "{revoked}");
    assert!(revoked.stdout.contains("revoked template"), "{revoked}");
    let seen = json_of(
        client(
            &server,
            operator,
            &["--json", "template", "show", &w.approved],
        ),
        "template show",
    );
    assert_eq!(seen["state"], "revoked", "{seen}");

    // The platform key is the store's.
    let local = veil(
        &[
            "platform-key",
            "--data-dir",
            w.fixture.store_path().to_str().expect("path"),
        ],
        &[],
    );
    let remote = client(&server, operator, &["platform-key"]);
    assert_eq!(remote.code, Some(0), "{remote}");
    assert_eq!(remote.stdout, local.stdout);

    // A buyer buys, the bureau recalls and is told whom to tell.
    let sold = client(
        &server,
        bureau,
        &["product", "sell", &w.product, "--price-fen", "900"],
    );
    assert_eq!(sold.code, Some(0), "{sold}");
    let bought = client(&server, &w.keys.buyer, &["product", "buy", &w.product]);
    assert_eq!(bought.code, Some(0), "{bought}");
    let recall = json_of(
        client(
            &server,
            bureau,
            &[
                "--json",
                "product",
                "recall",
                &w.product,
                "--reason",
                "a source was withdrawn",
            ],
        ),
        "product recall",
    );
    assert_eq!(recall["buyers"], serde_json::json!(["buyer-1"]), "{recall}");

    // A provider reads its usage: the job read its dataset.
    let usage = json_of(client(&server, &w.provider, &["--json", "usage"]), "usage");
    let social = usage
        .as_array()
        .and_then(|all| all.iter().find(|d| d["name"] == "social_insurance"))
        .unwrap_or_else(|| panic!("social_insurance in {usage}"));
    assert_eq!(social["jobs"], 1, "{usage}");
    let table = client(&server, &w.provider, &["usage"]);
    assert!(table.stdout.contains("social_insurance"), "{table}");

    // The bureau settles last month; this month has not ended, and says so (bad input).
    let settled = client(&server, bureau, &["settle", "--period", &last_month()]);
    assert_eq!(settled.code, Some(0), "{settled}");
    assert!(settled.stdout.contains("settled"), "{settled}");
    let early = client(
        &server,
        bureau,
        &[
            "settle",
            "--period",
            &veil_runtime::clock::period_of(veil_runtime::clock::now()),
        ],
    );
    assert_eq!(early.code, Some(2), "{early}");
    assert!(early.stderr.contains("has not ended"), "{early}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_list_and_object_command_prints_json_locally_and_through_the_client() {
    let w = world().await;
    let store = w.fixture.store_path();
    let store = store.to_str().expect("path");
    let local: &[&[&str]] = &[
        &["dataset", "list"],
        &["dataset", "show", "social_insurance"],
        &["grant", "list"],
        &["principal", "list"],
        &["template", "list"],
        &["template", "show", &w.approved],
        &["job", "list"],
        &["job", "show", &w.job],
        &["product", "list"],
        &["meter", "list"],
        &["price", "show"],
        &["ledger", "list"],
        &["platform-key"],
    ];
    for args in local {
        let mut all = args.to_vec();
        all.extend(["--data-dir", store, "--json"]);
        let value = json_of(veil(&all, &[]), &args.join(" "));
        assert!(!value.is_null(), "{args:?}");
    }
    // Commands that change something print what they made.
    let template_file = w.fixture.dir.path().join("by_gender.toml");
    std::fs::write(
        &template_file,
        "name = \"by_gender\"\nsql = \"SELECT gender, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY gender\"\n",
    )
    .expect("template file");
    let submitted = json_of(
        veil(
            &[
                "template",
                "submit",
                "--data-dir",
                store,
                "--operator",
                OPERATOR,
                "--file",
                template_file.to_str().expect("path"),
                "--json",
            ],
            &[],
        ),
        "template submit",
    );
    assert_eq!(submitted["state"], "submitted", "{submitted}");
    let ran = json_of(
        veil(
            &[
                "job",
                "run",
                "--data-dir",
                store,
                "--operator",
                OPERATOR,
                "--template",
                &w.approved,
                "--json",
            ],
            &[],
        ),
        "job run",
    );
    assert_eq!(ran["state"], "released", "{ran}");
    assert!(ran["product_id"].is_string(), "{ran}");

    let server = Server::start(&w.fixture.store_path(), 1);
    let (bureau, operator, buyer) = (&w.keys.bureau, &w.keys.operator, &w.keys.buyer);
    let remote: &[(&str, &[&str])] = &[
        (operator, &["whoami"]),
        (operator, &["datasets"]),
        (operator, &["grants"]),
        (operator, &["grant-requests"]),
        (operator, &["template", "list"]),
        (operator, &["template", "show", &w.approved]),
        (operator, &["job", "list"]),
        (operator, &["job", "show", &w.job]),
        (operator, &["meter"]),
        (operator, &["product", "list"]),
        (operator, &["product", "show", &w.product]),
        (buyer, &["offers"]),
        (buyer, &["purchases"]),
        (buyer, &["platform-key"]),
        (&w.provider, &["usage"]),
        (bureau, &["statement", &last_month(), "--party", "platform"]),
    ];
    for (key, args) in remote {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let run = client(&server, key, &all);
        // A statement of a month never settled is a 404; its error goes to stderr only.
        if args[0] == "statement" && run.code != Some(0) {
            assert!(run.stdout.is_empty(), "{run}");
            continue;
        }
        json_of(run, &args.join(" "));
    }
}

#[test]
fn exit_codes_mean_the_same_locally_and_through_the_client() {
    let fixture = Fixture::new(200);
    let mut fixture = fixture;
    let keys = add_principals(&mut fixture);
    let store = fixture.store_path();
    let store = store.to_str().expect("path");
    let raw = fixture.dir.path().join("raw_rows.toml");
    std::fs::write(
        &raw,
        "name = \"raw_rows\"\nsql = \"SELECT person_id, city FROM social_insurance\"\n",
    )
    .expect("template file");
    let raw = raw.to_str().expect("path");

    // A refusal is 3, locally and through the client.
    let local = veil(
        &[
            "template",
            "submit",
            "--data-dir",
            store,
            "--operator",
            OPERATOR,
            "--file",
            raw,
        ],
        &[],
    );
    assert_eq!(local.code, Some(3), "{local}");
    let server = Server::start(&fixture.store_path(), 1);
    let remote = client(&server, &keys.operator, &["template", "submit", raw]);
    assert_eq!(remote.code, Some(3), "{remote}");
    assert!(remote.stderr.contains("error:"), "{remote}");
    assert!(remote.stdout.is_empty(), "{remote}");

    // A missing path is bad input (2), locally and through the client.
    let missing = fixture.dir.path().join("no-such.toml");
    let missing = missing.to_str().expect("path");
    let local = veil(
        &[
            "template",
            "submit",
            "--data-dir",
            store,
            "--operator",
            OPERATOR,
            "--file",
            missing,
        ],
        &[],
    );
    assert_eq!(local.code, Some(2), "{local}");
    let remote = client(&server, &keys.operator, &["template", "submit", missing]);
    assert_eq!(remote.code, Some(2), "{remote}");
    let verify = veil(&["product", "verify", missing], &[]);
    assert_eq!(verify.code, Some(2), "{verify}");

    // A server that is not there is 7, not a resource limit (4).
    let unreachable = veil(
        &[
            "client",
            "--url",
            "http://127.0.0.1:9",
            "--token",
            &keys.operator,
            "whoami",
        ],
        &[],
    );
    assert_eq!(unreachable.code, Some(7), "{unreachable}");
    assert!(
        unreachable.stderr.contains("cannot reach the server"),
        "{unreachable}"
    );
    // No such route (a URL with a wrong path) is not a resource limit either.
    let wrong = veil(
        &[
            "client",
            "--url",
            &format!("{}/nothing-here", server.url),
            "--token",
            &keys.operator,
            "whoami",
        ],
        &[],
    );
    assert!(matches!(wrong.code, Some(1 | 2)), "{wrong}");
    // An id prefix too short says how long one must be, over HTTP naming the client command.
    let short = client(&server, &keys.operator, &["template", "show", "abc"]);
    assert_eq!(short.code, Some(2), "{short}");
    assert!(short.stderr.contains("at least 8 characters"), "{short}");
    assert!(
        short.stderr.contains("`veil client template list`"),
        "{short}"
    );
    let short = veil(&["template", "show", "abc", "--data-dir", store], &[]);
    assert!(short.stderr.contains("`veil template list`"), "{short}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_replaces_the_old_one_and_keeps_the_identity() {
    let mut fixture = Fixture::new(200);
    let keys = add_principals(&mut fixture);
    let store = fixture.store_path();
    let store = store.to_str().expect("path");
    let server = Server::start(&fixture.store_path(), 1);
    let before = json_of(
        client(&server, &keys.operator, &["--json", "grants"]),
        "grants",
    );

    // Locally: a new key, printed once; the old key answers 401 at once.
    let rotated = json_of(
        veil(
            &[
                "principal",
                "rotate",
                OPERATOR,
                "--data-dir",
                store,
                "--json",
            ],
            &[],
        ),
        "principal rotate",
    );
    let local_key = rotated["key"].as_str().expect("a key").to_string();
    assert_eq!(rotated["name"], OPERATOR);
    let old = Client::new(&server.url, &keys.operator).expect("client");
    assert!(matches!(old.me().await, Err(ClientError::Unauthorized(_))));
    let refused = client(&server, &keys.operator, &["whoami"]);
    assert_eq!(refused.code, Some(2), "{refused}");
    assert!(refused.stderr.contains("not authenticated"), "{refused}");
    // The new key is the same principal, with the same grants.
    let me = json_of(client(&server, &local_key, &["--json", "whoami"]), "whoami");
    assert_eq!(me["name"], OPERATOR);
    assert_eq!(me["id"], rotated["id"]);
    let after = json_of(client(&server, &local_key, &["--json", "grants"]), "grants");
    assert_eq!(before, after);

    // Through the client: the bureau rotates again; only the newest key works.
    let rotated = json_of(
        client(
            &server,
            &keys.bureau,
            &[
                "--json",
                "principal",
                "rotate",
                OPERATOR,
                "--expires-in-days",
                "30",
            ],
        ),
        "client principal rotate",
    );
    let remote_key = rotated["key"].as_str().expect("a key").to_string();
    assert!(rotated["key_expires_at"].is_string(), "{rotated}");
    assert_eq!(client(&server, &local_key, &["whoami"]).code, Some(2));
    let me = json_of(
        client(&server, &remote_key, &["--json", "whoami"]),
        "whoami",
    );
    assert_eq!(me["id"], rotated["id"]);
    // Only the bureau rotates keys.
    let forbidden = client(&server, &remote_key, &["principal", "rotate", "buyer-1"]);
    assert_eq!(forbidden.code, Some(2), "{forbidden}");
    assert!(forbidden.stderr.contains("bureau"), "{forbidden}");

    // The bureau's audit log has one entry per rotation.
    let log = veil(&["audit", "verify", "--data-dir", store], &[]);
    assert_eq!(log.code, Some(0), "{log}");
    let rotations: i64 = fixture
        .store
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE kind = 'principal.key_rotated'",
            [],
            |row| row.get(0),
        )
        .expect("count");
    assert_eq!(rotations, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_key_is_refused_with_401_saying_to_ask_the_bureau() {
    let mut fixture = Fixture::new(200);
    let _keys = add_principals(&mut fixture);
    let store = fixture.store_path();
    let store = store.to_str().expect("path");
    // Rotated ten days ago for one day: it has expired by now.
    let then = veil_runtime::clock::format(veil_runtime::clock::now() - chrono::Duration::days(10));
    let rotated = json_of(
        veil(
            &[
                "principal",
                "rotate",
                "buyer-1",
                "--expires-in-days",
                "1",
                "--data-dir",
                store,
                "--json",
            ],
            &[("VEIL_CLOCK", &then)],
        ),
        "principal rotate",
    );
    let key = rotated["key"].as_str().expect("a key").to_string();
    let server = Server::start(&fixture.store_path(), 1);
    let response = reqwest::Client::new()
        .get(format!("{}/v1/me", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.expect("JSON body");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("expired"), "{body}");
    assert!(message.contains("ask the bureau for a new key"), "{body}");
    let run = client(&server, &key, &["whoami"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("ask the bureau"), "{run}");
    // The principal list shows when the key expired.
    let listed = veil(&["principal", "list", "--data-dir", store], &[]);
    assert!(
        listed
            .stdout
            .contains(rotated["key_expires_at"].as_str().expect("expiry")),
        "{listed}"
    );
}
