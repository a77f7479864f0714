//! Template submission checks the same things through every door: `veil template submit` on
//! the store and `POST /v1/templates` on a running `veil serve` (through the SDK client) refuse
//! the same broken templates with the same rules, whether or not the operator holds a grant
//! yet, and store nothing for them.

use std::path::{Path, PathBuf};
use std::process::Command;

use veil_runtime::principals::{self, Role};
use veil_sdk::client::{Client, ClientError};

use crate::serve::{Server, add_principals};
use crate::support::{Fixture, OPERATOR, veil_bin};

/// An operator with a key but no grant: its templates are checked against the catalog.
const NEW_OPERATOR: &str = "op-without-grant";

/// What the local command prints above the rules of a refused template.
const LOCAL_HEADING: &str = "template refused before submission";

/// A broken template file and the rules it breaks, in the order the gate lists them.
struct Broken {
    file: PathBuf,
    rules: &'static [&'static str],
}

/// Writes a SQL template file named `name` into `dir`.
fn template_file(dir: &Path, name: &str, sql: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("name = \"{name}\"\nsql = \"\"\"\n{sql}\n\"\"\"\n"),
    )
    .expect("write a template file");
    path
}

/// The three templates an operator should hear about before the bureau reads them: a typo
/// that breaks the SQL, a column no dataset has, and the example that sends raw rows out.
fn broken_templates(dir: &Path) -> Vec<Broken> {
    vec![
        Broken {
            file: template_file(
                dir,
                "parse_error",
                "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY city,",
            ),
            rules: &["statement.parse"],
        },
        Broken {
            file: template_file(
                dir,
                "unknown_column",
                "SELECT city, SUM(monthly_incom) AS income FROM social_insurance GROUP BY city",
            ),
            rules: &["statement.scope"],
        },
        Broken {
            file: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/templates/raw_incomes.toml"),
            rules: &["shape.aggregate_only", "statement.identifier"],
        },
    ]
}

/// Submits `file` with `veil template submit` as `operator`; returns the exit code and the rule
/// names it lists under its refusal heading.
fn submit_locally(store: &Path, operator: &str, file: &Path) -> (Option<i32>, Vec<String>) {
    let output = Command::new(veil_bin())
        .env_remove("VEIL_DATA_DIR")
        .args(["template", "submit", "--operator", operator, "--file"])
        .arg(file)
        .arg("--data-dir")
        .arg(store)
        .output()
        .expect("veil runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let code = output.status.code();
    if code == Some(3) {
        assert!(
            stdout.starts_with(LOCAL_HEADING),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let rules = stdout
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- ["))
        .filter_map(|rest| rest.split_once(']'))
        .map(|(rule, _)| rule.to_string())
        .collect();
    (code, rules)
}

/// Submits `file` over HTTP; returns the HTTP refusal's rule names (or fails the test if the
/// server took the template or failed otherwise).
async fn submit_over_http(client: &Client, file: &Path) -> Vec<String> {
    match client.submit_template_file(file).await {
        Err(error @ ClientError::Refused { .. }) => error
            .violations()
            .iter()
            .map(|violation| violation.rule.clone())
            .collect(),
        other => panic!("{} must be refused: {other:?}", file.display()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_and_the_local_command_refuse_the_same_broken_templates_with_the_same_rules() {
    let mut fixture = Fixture::new(500);
    let keys = add_principals(&mut fixture);
    let new_operator_key = principals::add(&mut fixture.store, Role::Operator, NEW_OPERATOR)
        .expect("principal")
        .1
        .expose()
        .to_string();
    let server = Server::start(&fixture.store_path(), 1);
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let store = fixture.store_path();
    let dir = fixture.dir.path().join("templates");
    std::fs::create_dir_all(&dir).expect("folder");

    // OPERATOR holds a grant to both demo datasets; NEW_OPERATOR holds none, so its templates
    // are checked against the registered datasets their SQL names.
    for (operator, key) in [
        (OPERATOR, &keys.operator),
        (NEW_OPERATOR, &new_operator_key),
    ] {
        let client = Client::new(&server.url, key).expect("client");
        for broken in broken_templates(&dir) {
            let over_http = submit_over_http(&client, &broken.file).await;
            let (code, locally) = submit_locally(&store, operator, &broken.file);
            let what = format!("{} by {operator}", broken.file.display());
            assert_eq!(over_http, broken.rules, "HTTP, {what}");
            assert_eq!(code, Some(3), "local, {what}");
            assert_eq!(locally, over_http, "local and HTTP, {what}");
        }
    }
    let stored = bureau.templates().await.expect("templates");
    assert!(
        stored.is_empty(),
        "a refused template was stored: {stored:?}"
    );

    // A sound template passes both doors for both operators: the checks refuse what is
    // broken, not everything (and not everything an operator without a grant sends). Each
    // submission has its own name, since the same bytes from another operator are refused.
    for (operator, key) in [
        (OPERATOR, &keys.operator),
        (NEW_OPERATOR, &new_operator_key),
    ] {
        let sql =
            "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY city";
        let client = Client::new(&server.url, key).expect("client");
        let over_http = template_file(&dir, &format!("sound_http_{operator}"), sql);
        let submitted = client
            .submit_template_file(&over_http)
            .await
            .unwrap_or_else(|e| panic!("a sound template from {operator} over HTTP: {e:?}"));
        assert_eq!(submitted.state, "submitted");
        let locally = template_file(&dir, &format!("sound_local_{operator}"), sql);
        let (code, rules) = submit_locally(&store, operator, &locally);
        assert_eq!(
            (code, rules),
            (Some(0), Vec::new()),
            "a sound template from {operator}, locally"
        );
    }
    let stored = bureau.templates().await.expect("templates");
    assert_eq!(stored.len(), 4, "{stored:?}");
}
