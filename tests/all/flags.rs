//! The local commands and their `veil client` twins take the same terms: the same flags, the
//! same defaults, the same refusals. And the defaults work together: a grant an operator asks
//! for with no δ lets a template approved with no δ run and release, through `veil serve`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use chrono::Days;
use veil_runtime::principals::{self, Role};
use veil_sdk::api::{ApproveGrantRequest, GrantRequestView};
use veil_sdk::client::Client;

use crate::serve::{Server, add_principals};
use crate::support::{Fixture, Run, veil_bin};

/// An operator with no grant yet, who applies for one.
const APPLICANT: &str = "op-applicant";

/// Runs `veil` with `args`, with none of the caller's Veil settings in its environment.
fn veil(args: &[&str]) -> Run {
    let output = Command::new(veil_bin())
        .env_remove("VEIL_DATA_DIR")
        .env_remove("VEIL_URL")
        .env_remove("VEIL_TOKEN")
        .args(args)
        .output()
        .expect("run veil");
    Run::from(output)
}

/// Runs `veil client …` against `server` with `key`, and insists on exit code 0.
fn client_ok(server: &Server, key: &str, args: &[&str]) -> Run {
    let mut all = vec!["client", "--url", &server.url, "--token", key];
    all.extend_from_slice(args);
    let run = veil(&all);
    assert_eq!(run.code, Some(0), "{run}");
    run
}

/// The flags a `--help` lists, each with its whole entry (value name, description, default),
/// but for those in `besides`.
fn help_flags(args: &[&str], besides: &[&str]) -> BTreeMap<String, String> {
    let run = veil(args);
    assert_eq!(run.code, Some(0), "{run}");
    let mut flags = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in run.stdout.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('-') {
            flags.extend(current.take());
            let long = trimmed
                .split_whitespace()
                .find_map(|word| word.trim_end_matches(',').strip_prefix("--"))
                .unwrap_or_else(|| panic!("no long flag in `{line}`:\n{run}"));
            current = Some((long.to_string(), trimmed.to_string()));
        } else if trimmed.is_empty() || !line.starts_with(' ') {
            flags.extend(current.take());
        } else if let Some((_, entry)) = &mut current {
            entry.push(' ');
            entry.push_str(trimmed);
        }
    }
    flags.extend(current);
    flags.retain(|long, _| long != "help" && !besides.contains(&long.as_str()));
    flags
}

/// The `[default: …]` an entry of [`help_flags`] shows.
fn default_of(entry: &str) -> Option<&str> {
    let start = entry.find("[default: ")? + "[default: ".len();
    entry[start..].split(']').next()
}

/// Flags only `veil client` has: the server, the key, the profile.
const CLIENT_ONLY: &[&str] = &["url", "token", "profile"];

/// A local command, its `veil client` twin, and the flags only the local one has (who acts:
/// over HTTP the key says).
const TWINS: &[(&[&str], &[&str], &[&str])] = &[
    (
        &["template", "reject"],
        &["client", "template", "reject"],
        &[],
    ),
    (
        &["template", "revoke"],
        &["client", "template", "revoke"],
        &[],
    ),
    (&["template", "show"], &["client", "template", "show"], &[]),
    (&["template", "list"], &["client", "template", "list"], &[]),
    (
        &["job", "check"],
        &["client", "job", "check"],
        &["operator"],
    ),
    (&["job", "show"], &["client", "job", "show"], &[]),
    (&["job", "list"], &["client", "job", "list"], &[]),
    (
        &["product", "sell"],
        &["client", "product", "sell"],
        &["operator"],
    ),
    (
        &["product", "recall"],
        &["client", "product", "recall"],
        &[],
    ),
    (&["product", "list"], &["client", "product", "list"], &[]),
    (&["settle"], &["client", "settle"], &[]),
    (
        &["principal", "rotate"],
        &["client", "principal", "rotate"],
        &[],
    ),
    (&["platform-key"], &["client", "platform-key"], &[]),
    (&["meter", "list"], &["client", "meter"], &[]),
    (&["grant", "list"], &["client", "grants"], &[]),
    (&["dataset", "list"], &["client", "datasets"], &[]),
];

/// Every local command with a client twin lists the same flags with the same text and
/// defaults, `--json` among them.
#[test]
fn every_local_command_and_its_client_twin_list_the_same_flags() {
    for (local, client, local_only) in TWINS {
        let besides: Vec<&str> = ["data-dir"]
            .iter()
            .chain(local_only.iter())
            .copied()
            .collect();
        // Help aligns descriptions to the longest flag, which differs: compare words only.
        let words = |flags: BTreeMap<String, String>| -> BTreeMap<String, String> {
            flags
                .into_iter()
                .map(|(k, v)| (k, v.split_whitespace().collect::<Vec<_>>().join(" ")))
                .collect()
        };
        let local_flags = words(help_flags(&[*local, &["--help"][..]].concat(), &besides));
        let client_flags = words(help_flags(
            &[*client, &["--help"][..]].concat(),
            CLIENT_ONLY,
        ));
        assert_eq!(local_flags, client_flags, "{local:?} and {client:?}");
        assert!(
            local_flags.contains_key("json"),
            "{local:?}: {local_flags:?}"
        );
    }
}

#[test]
fn both_approve_commands_list_the_same_flags_and_defaults() {
    let local = help_flags(&["template", "approve", "--help"], &["data-dir"]);
    let client = help_flags(&["client", "template", "approve", "--help"], CLIENT_ONLY);
    assert_eq!(local, client);
    for flag in [
        "epsilon",
        "delta",
        "k",
        "max-groups",
        "max-rows",
        "price-fen",
        "memory-mib",
        "wall-seconds",
        "wasm-fuel-per-unit",
        "wasm-memory-mib",
        "mechanism",
    ] {
        let entry = local
            .get(flag)
            .unwrap_or_else(|| panic!("--{flag} missing: {local:#?}"));
        // ε is the bureau's choice every time; every other term has a default.
        assert_eq!(default_of(entry).is_none(), flag == "epsilon", "{entry}");
    }
}

#[test]
fn both_grant_commands_list_the_same_flags_and_a_delta_jobs_can_spend() {
    let local = help_flags(&["grant", "create", "--help"], &["data-dir", "operator"]);
    let client = help_flags(&["client", "request-grant", "--help"], CLIENT_ONLY);
    assert_eq!(local, client);
    let delta = local
        .get("delta-per-month")
        .and_then(|entry| default_of(entry))
        .and_then(|text| text.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("a numeric --delta-per-month default: {local:#?}"));
    assert!(delta > 0.0, "δ per month {delta} lets no job run");
}

#[test]
fn both_approve_commands_refuse_a_missing_epsilon_naming_it() {
    let temp = tempfile::tempdir().expect("temporary folder");
    let data = temp.path().to_str().expect("utf-8 path");
    let local = veil(&[
        "template",
        "approve",
        "--data-dir",
        data,
        "tmpl-x",
        "--k",
        "5",
    ]);
    // The refusal comes from the command line itself, before any server is asked: the port
    // below listens to nobody.
    let client = veil(&[
        "client",
        "--url",
        "http://127.0.0.1:9",
        "--token",
        "veil_x",
        "template",
        "approve",
        "tmpl-x",
        "--k",
        "5",
    ]);
    for run in [&local, &client] {
        assert_eq!(run.code, Some(2), "{run}");
        assert!(run.stderr.contains("--epsilon"), "{run}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_requested_without_delta_lets_a_job_run_and_release() {
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let applicant = principals::add(&mut fixture.store, Role::Operator, APPLICANT)
        .expect("principal")
        .1
        .expose()
        .to_string();
    let server = Server::start(&fixture.store_path(), 1);

    // The operator applies with no --delta-per-month; the bureau approves as asked.
    let today = veil_runtime::clock::today();
    let from = (today - Days::new(1)).to_string();
    let to = (today + Days::new(300)).to_string();
    let asked = client_ok(
        &server,
        &applicant,
        &[
            "--json",
            "request-grant",
            "--datasets",
            "social_insurance",
            "--purpose",
            "labour-market statistics",
            "--valid-from",
            &from,
            "--valid-to",
            &to,
            "--epsilon-per-month",
            "5",
        ],
    );
    let request: GrantRequestView = serde_json::from_str(&asked.stdout).expect("JSON");
    assert_eq!(request.state, "pending");
    let bureau = Client::new(&server.url, &keys.bureau).expect("client");
    let decided = bureau
        .approve_grant_request(&request.id, &ApproveGrantRequest::default())
        .await
        .expect("approved");
    assert_eq!(decided.state, "approved");
    assert!(decided.grant_id.is_some(), "{decided:?}");

    // A template approved with no --delta runs under that grant and releases a product.
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/templates/income_by_city_gender.toml");
    let submitted = client_ok(
        &server,
        &applicant,
        &[
            "--json",
            "template",
            "submit",
            file.to_str().expect("utf-8 path"),
        ],
    );
    let template: serde_json::Value = serde_json::from_str(&submitted.stdout).expect("JSON");
    let id = template["id"].as_str().expect("a template id").to_string();
    client_ok(
        &server,
        &keys.bureau,
        &["template", "approve", &id, "--epsilon", "1", "--k", "5"],
    );
    let job = client_ok(
        &server,
        &applicant,
        &[
            "--json",
            "job",
            "submit",
            "--template",
            &id,
            "--param",
            "year=2024",
            "--wait",
        ],
    );
    let job: serde_json::Value = serde_json::from_str(&job.stdout).expect("JSON");
    assert_eq!(job["state"], "released", "{job:#}");
    assert!(job["product_id"].is_string(), "{job:#}");

    // It ran under the grant the request became, the operator's only one.
    assert_eq!(
        job["grant_id"].as_str(),
        decided.grant_id.as_deref(),
        "{job:#}"
    );
    let grants = Client::new(&server.url, &applicant)
        .expect("client")
        .grants()
        .await
        .expect("grants");
    assert_eq!(grants.len(), 1, "{grants:?}");
}
