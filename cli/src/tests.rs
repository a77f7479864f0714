//! Unit tests of the shared flag definitions (`terms`) against the whole command line: they
//! need `local::Cli`, so they live beside both rather than inside `terms`.

use crate::terms::*;
use clap::{Args, CommandFactory, Parser};
use veil_runtime::grants::Disposition;
use veil_runtime::grants::to_pico;
use veil_runtime::templates::ApprovalRequest;

use crate::local::Cli;

/// A command line of one flattened set, to parse it alone.
#[derive(Debug, Parser)]
struct Only<T: Args> {
    #[command(flatten)]
    terms: T,
}

/// Each flag of the command at `path` (but those in `besides`): its name, whether it is
/// required, and its defaults.
fn flags(path: &[&str], besides: &[&str]) -> Vec<(String, bool, Vec<String>)> {
    let mut command = Cli::command();
    command.build();
    let mut at = &command;
    for name in path {
        at = at
            .find_subcommand(name)
            .unwrap_or_else(|| panic!("no subcommand `{name}` in {path:?}"));
    }
    let mut flags: Vec<_> = at
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(|long| (long, arg)))
        .filter(|(long, _)| !besides.contains(long) && *long != "help")
        .map(|(long, arg)| {
            (
                long.to_string(),
                arg.is_required_set(),
                arg.get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect(),
            )
        })
        .collect();
    flags.sort();
    flags
}

#[test]
fn both_approve_commands_take_the_same_flags_with_the_same_defaults() {
    let local = flags(&["template", "approve"], &["data-dir"]);
    let client = flags(&["client", "template", "approve"], CLIENT_ONLY);
    assert_eq!(local, client);
    let epsilon = local.iter().find(|(name, ..)| name == "epsilon");
    assert_eq!(
        epsilon,
        Some(&("epsilon".to_string(), true, Vec::new())),
        "--epsilon is required, with no default"
    );
    assert_eq!(local.len(), 13, "{local:?}");
}

#[test]
fn both_grant_commands_take_the_same_flags_with_the_same_defaults() {
    let local = flags(&["grant", "create"], &["data-dir", "operator"]);
    let client = flags(&["client", "request-grant"], CLIENT_ONLY);
    assert_eq!(local, client);
    assert_eq!(local.len(), 9, "{local:?}");
}

/// Flags only `veil client` has: where the server is and who calls it.
const CLIENT_ONLY: &[&str] = &["url", "token", "profile"];

/// Every local command and its `veil client` twin, with the flags only the local one has
/// (the store, and who acts: over HTTP the key says who).
const TWINS: &[(&[&str], &[&str], &[&str])] = &[
    (&["dataset", "list"], &["client", "datasets"], &[]),
    (&["dataset", "show"], &["client", "dataset", "show"], &[]),
    (&["grant", "list"], &["client", "grants"], &[]),
    (
        &["principal", "rotate"],
        &["client", "principal", "rotate"],
        &[],
    ),
    (&["template", "list"], &["client", "template", "list"], &[]),
    (&["template", "show"], &["client", "template", "show"], &[]),
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
    (
        &["job", "check"],
        &["client", "job", "check"],
        &["operator"],
    ),
    (&["job", "show"], &["client", "job", "show"], &[]),
    (&["job", "list"], &["client", "job", "list"], &[]),
    (&["meter", "list"], &["client", "meter"], &[]),
    (&["product", "list"], &["client", "product", "list"], &[]),
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
    (&["settle"], &["client", "settle"], &[]),
    (&["dispute", "list"], &["client", "dispute", "list"], &[]),
    (
        &["dispute", "uphold"],
        &["client", "dispute", "uphold"],
        &[],
    ),
    (
        &["dispute", "reject"],
        &["client", "dispute", "reject"],
        &[],
    ),
    (&["platform-key"], &["client", "platform-key"], &[]),
];

#[test]
fn every_local_command_and_its_client_twin_take_the_same_flags() {
    for (local_path, client_path, local_only) in TWINS {
        let besides: Vec<&str> = ["data-dir"]
            .iter()
            .chain(local_only.iter())
            .copied()
            .collect();
        let local = flags(local_path, &besides);
        let client = flags(client_path, CLIENT_ONLY);
        assert_eq!(local, client, "{local_path:?} and {client_path:?}");
        // Each prints a list or an object, so each takes --json.
        assert!(
            local.iter().any(|(name, ..)| name == "json"),
            "{local_path:?} has no --json"
        );
    }
}

/// Every command that prints a list or an object takes `--json`, locally and through the
/// client; the ones that print neither (or always print JSON) are named here.
#[test]
fn every_command_that_prints_a_list_or_an_object_takes_json() {
    const WITHOUT: &[&str] = &[
        "demo",
        "init",
        "demo-data",
        "serve",
        // Runs until stopped, like serve; prints the address it listens on.
        "executor",
        "product verify",
        "price set",
        "audit verify",
        // Writes the register's CSV and JSON files and says where.
        "dataset register-export",
    ];
    fn walk(command: &clap::Command, path: &mut Vec<String>, missing: &mut Vec<String>) {
        let leaf = command.get_subcommands().next().is_none();
        if leaf {
            let name = path.join(" ");
            let has_json = command
                .get_arguments()
                .any(|a| a.get_long() == Some("json"));
            if !has_json && !WITHOUT.contains(&name.as_str()) {
                missing.push(name);
            }
            return;
        }
        for sub in command.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            path.push(sub.get_name().to_string());
            walk(sub, path, missing);
            path.pop();
        }
    }
    let mut command = Cli::command();
    command.build();
    let mut missing = Vec::new();
    walk(&command, &mut Vec::new(), &mut missing);
    assert!(missing.is_empty(), "without --json: {missing:?}");
}

#[test]
fn approval_defaults_are_the_domains() {
    let parsed = Only::<ApprovalTerms>::try_parse_from(["x", "--epsilon", "0.5"])
        .expect("only --epsilon is needed");
    let expected = ApprovalRequest {
        epsilon: 0.5,
        ..ApprovalRequest::default()
    };
    assert_eq!(
        format!("{:?}", parsed.terms.request()),
        format!("{expected:?}")
    );
    let missing = Only::<ApprovalTerms>::try_parse_from(["x", "--k", "5"])
        .expect_err("--epsilon is required");
    assert_eq!(
        missing.kind(),
        clap::error::ErrorKind::MissingRequiredArgument
    );
    assert!(missing.to_string().contains("--epsilon"), "{missing}");
}

#[test]
fn the_wire_approval_sends_every_term_as_the_domain_takes_it() {
    let terms = Only::<ApprovalTerms>::try_parse_from(["x", "--epsilon", "0.25", "--k", "7"])
        .expect("parses")
        .terms;
    let request = terms.request();
    let wire = terms.wire();
    assert_eq!(wire.epsilon, Some(0.25));
    assert_eq!(wire.k, Some(7));
    assert_eq!(wire.delta, Some(request.delta));
    assert_eq!(wire.wasm_fuel_per_unit, Some(request.wasm_fuel_per_unit));
    assert_eq!(wire.wasm_memory_mib, Some(request.wasm_memory_mib));
}

#[test]
fn a_grant_with_the_default_delta_covers_runs_at_the_default_delta() {
    let terms = Only::<GrantTerms>::try_parse_from([
        "x",
        "--datasets",
        "a,b",
        "--purpose",
        "statistics",
        "--valid-from",
        "2025-01-01",
        "--valid-to",
        "2025-12-31",
        "--epsilon-per-month",
        "2",
    ])
    .expect("parses")
    .terms;
    let per_month = to_pico(terms.delta_per_month, "δ per month").expect("valid δ");
    let per_run = to_pico(ApprovalRequest::default().delta, "δ per run").expect("valid δ");
    assert!(per_run.0 > 0);
    assert_eq!(
        per_month.0 / per_run.0,
        10,
        "ten runs a month at the default δ"
    );
    let wire = terms.clone().wire();
    assert_eq!(wire.delta_per_month, DELTA_PER_MONTH_DEFAULT);
    assert_eq!(wire.disposition, "archive");
    assert_eq!(wire.valid_from, "2025-01-01");
    assert_eq!(wire.datasets, ["a", "b"]);
    let request = terms.request("op".into());
    assert_eq!(request.disposition, Disposition::Archive);
}

#[test]
fn a_bad_date_or_disposition_is_refused_naming_the_flag() {
    let base = [
        "x",
        "--datasets",
        "a",
        "--purpose",
        "p",
        "--valid-to",
        "2025-12-31",
        "--epsilon-per-month",
        "1",
    ];
    let date = Only::<GrantTerms>::try_parse_from(base.iter().chain(&["--valid-from", "1/2"]))
        .expect_err("not a date");
    assert!(date.to_string().contains("--valid-from"), "{date}");
    assert!(date.to_string().contains("YYYY-MM-DD"), "{date}");
    let disposition = Only::<GrantTerms>::try_parse_from(base.iter().chain(&[
        "--valid-from",
        "2025-01-01",
        "--disposition",
        "keep",
    ]))
    .expect_err("no such disposition");
    assert!(
        disposition.to_string().contains("--disposition"),
        "{disposition}"
    );
    assert!(
        disposition
            .to_string()
            .contains("destroy, archive or return"),
        "{disposition}"
    );
}

/// Every command and every flag of `veil` (local and `veil client`) has help text, so
/// `--help` explains each one.
#[test]
fn every_command_and_flag_has_help() {
    fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for sub in command.get_subcommands() {
            let here = format!("{path} {}", sub.get_name());
            if sub.get_name() == "help" || sub.is_hide_set() {
                continue;
            }
            if sub.get_about().is_none() {
                missing.push(format!("{here}: no about"));
            }
            for arg in sub.get_arguments() {
                if arg.is_hide_set() || ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{here} {}", arg.get_id()));
                }
            }
            walk(sub, &here, missing);
        }
    }
    let mut command = Cli::command();
    command.build();
    let mut missing = Vec::new();
    walk(&command, "veil", &mut missing);
    assert!(
        missing.is_empty(),
        "{} without help:\n{}",
        missing.len(),
        missing.join("\n")
    );
}
