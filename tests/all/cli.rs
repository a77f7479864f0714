//! The `veil` binary, driven the way the bureau, an operator and a buyer drive it.
//!
//! One story on a fresh store: initialise, generate data, register it (and see a bad policy
//! refused, naming the column), grant it, submit and approve a template, run a job, verify the
//! product offline (and see a changed byte caught, naming the file), see a template that
//! differs by one byte refused as unapproved and a raw-row template refused at submission,
//! read the meter and verify the audit log. Then `veil demo` itself, on small data.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{Days, Utc};

use crate::support::{self, Run};

/// The example files, from the workspace root.
fn example(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(relative)
}

/// Runs `veil` with `args`, with none of the caller's Veil settings in its environment.
fn veil<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = Command::new(support::veil_bin())
        .env_remove("VEIL_DATA_DIR")
        .env_remove("VEIL_CLOCK")
        .args(args)
        .output()
        .expect("run veil");
    Run::from(output)
}

/// Runs `veil` and insists on exit code 0.
fn veil_ok<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let run = veil(args);
    assert_eq!(run.code, Some(0), "{run}");
    run
}

/// The word after `marker` in `text`.
fn word_after<'a>(text: &'a str, marker: &str) -> &'a str {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("`{marker}` not in:\n{text}"))
        + marker.len();
    text[start..]
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("nothing after `{marker}` in:\n{text}"))
}

/// The job id a `veil job run` printed (`job <id> released …` or `job <id> rejected:`).
fn job_id(run: &Run) -> String {
    word_after(&run.stdout, "job ").to_string()
}

/// Data rows of a table printed by `veil … list` (after the header and its underline).
fn table_rows(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .skip_while(|line| !line.starts_with('─'))
        .skip(1)
        .filter(|line| !line.trim().is_empty() && *line != "(none)")
        .collect()
}

const OPERATOR: &str = "jinyun-data-operations";

#[test]
fn the_whole_flow_through_the_command_line() {
    let temp = tempfile::tempdir().expect("temporary folder");
    let data = temp.path().join("store");
    let raw = temp.path().join("raw");
    let d = data.to_str().expect("utf-8 path");

    let init = veil_ok(["init", "--data-dir", d]);
    assert!(init.stdout.contains("initialized"), "{init}");
    veil_ok([
        OsStr::new("demo-data"),
        OsStr::new("--rows"),
        OsStr::new("3000"),
        OsStr::new("--out"),
        raw.as_os_str(),
    ]);

    // The bureau registers the table with its policy.
    let table = raw.join("social_insurance.parquet");
    let register = |name: &str, policy: &Path| {
        veil([
            OsStr::new("dataset"),
            OsStr::new("register"),
            OsStr::new("--data-dir"),
            data.as_os_str(),
            OsStr::new("--name"),
            OsStr::new(name),
            OsStr::new("--file"),
            table.as_os_str(),
            OsStr::new("--policy"),
            policy.as_os_str(),
        ])
    };
    let registered = register(
        "social_insurance",
        &example("policies/social_insurance.toml"),
    );
    assert_eq!(registered.code, Some(0), "{registered}");
    assert!(
        registered.stdout.contains("3000 rows"),
        "{}",
        registered.stdout
    );

    // A policy naming a column the file does not have is the bureau's mistake: exit 2, and
    // the message names the column.
    let bad = temp.path().join("bad_policy.toml");
    let policy_text =
        std::fs::read_to_string(example("policies/social_insurance.toml")).expect("policy");
    std::fs::write(
        &bad,
        format!("{policy_text}\n[columns.salary_grade]\nrole = \"public\"\n"),
    )
    .expect("write policy");
    let refused = register("social_insurance_copy", &bad);
    assert_eq!(refused.code, Some(2), "{refused}");
    assert!(refused.stderr.contains("`salary_grade`"), "{refused}");

    let list = veil_ok(["dataset", "list", "--data-dir", d]);
    let rows = table_rows(&list.stdout);
    assert_eq!(rows.len(), 1, "only the good registration is kept:\n{list}");
    assert!(
        rows[0].starts_with("social_insurance ") && rows[0].contains("3000"),
        "{list}"
    );

    // The bureau grants it to the operator for a term around today.
    let today = Utc::now().date_naive();
    let from = (today - Days::new(30)).to_string();
    let to = (today + Days::new(335)).to_string();
    veil_ok([
        "grant",
        "create",
        "--data-dir",
        d,
        "--operator",
        OPERATOR,
        "--datasets",
        "social_insurance",
        "--purpose",
        "labour-market statistics",
        "--valid-from",
        &from,
        "--valid-to",
        &to,
        "--epsilon-per-month",
        "10",
    ]);

    // The operator submits a template; the bureau approves it.
    let income = example("templates/income_by_city_gender.toml");
    let submit = |file: &Path| {
        veil([
            OsStr::new("template"),
            OsStr::new("submit"),
            OsStr::new("--data-dir"),
            data.as_os_str(),
            OsStr::new("--operator"),
            OsStr::new(OPERATOR),
            OsStr::new("--file"),
            file.as_os_str(),
        ])
    };
    let submitted = submit(&income);
    assert_eq!(submitted.code, Some(0), "{submitted}");
    let template = word_after(&submitted.stdout, "`: ").to_string();
    veil_ok([
        "template",
        "approve",
        "--data-dir",
        d,
        &template,
        "--epsilon",
        "1",
        "--k",
        "5",
    ]);

    // The operator runs it and gets a product folder.
    let run_job = |template: &str| {
        veil([
            "job",
            "run",
            "--data-dir",
            d,
            "--operator",
            OPERATOR,
            "--template",
            template,
            "--param",
            "year=2025",
        ])
    };
    let released = run_job(&template);
    assert_eq!(released.code, Some(0), "{released}");
    assert!(released.stdout.contains("released product"), "{released}");
    let released_job = job_id(&released);
    let product = PathBuf::from(word_after(&released.stdout, "files: "));
    assert!(product.join("result.csv").is_file(), "{released}");

    // A buyer verifies it offline against the pinned platform key.
    let key = veil_ok(["platform-key", "--data-dir", d])
        .stdout
        .trim()
        .to_string();
    assert_eq!(key.len(), 64, "{key}");
    let verify = |dir: &Path| {
        veil([
            OsStr::new("product"),
            OsStr::new("verify"),
            dir.as_os_str(),
            OsStr::new("--public-key"),
            OsStr::new(&key),
        ])
    };
    let verified = verify(&product);
    assert_eq!(verified.code, Some(0), "{verified}");
    assert!(verified.stdout.contains("verified"), "{verified}");

    // One changed byte in a downloaded copy is caught, naming the file.
    let download = temp.path().join("download");
    std::fs::create_dir(&download).expect("folder");
    for entry in std::fs::read_dir(&product).expect("product folder") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), download.join(entry.file_name())).expect("copy");
    }
    let csv = download.join("result.csv");
    let mut bytes = std::fs::read(&csv).expect("csv");
    let last = bytes.len() - 2;
    bytes[last] ^= 0x01;
    std::fs::write(&csv, bytes).expect("write csv");
    let tampered = verify(&download);
    assert_ne!(tampered.code, Some(0), "{tampered}");
    assert!(
        tampered.stdout.contains("result.csv") || tampered.stderr.contains("result.csv"),
        "{tampered}"
    );

    // The same template with one extra space is a different template, never approved.
    let text = std::fs::read_to_string(&income).expect("template");
    assert!(text.contains("SELECT city"));
    let spaced = temp.path().join("income_spaced.toml");
    std::fs::write(&spaced, text.replacen("SELECT city", "SELECT  city", 1)).expect("write");
    let resubmitted = submit(&spaced);
    assert_eq!(resubmitted.code, Some(0), "{resubmitted}");
    let other = word_after(&resubmitted.stdout, "`: ").to_string();
    assert_ne!(other, template);
    let unapproved = run_job(&other);
    assert_eq!(unapproved.code, Some(3), "{unapproved}");
    assert!(
        unapproved.stdout.contains("template.not_approved"),
        "{unapproved}"
    );
    let unapproved_job = job_id(&unapproved);
    // Its pre-flight says so, and also what else a job would meet: here a year outside the
    // template's allowed list.
    let checked = veil([
        "job",
        "check",
        "--data-dir",
        d,
        "--operator",
        OPERATOR,
        "--template",
        &other,
        "--param",
        "year=1999",
    ]);
    assert!(
        checked.stdout.contains("template.not_approved")
            && checked.stdout.contains("statement.parameters")
            && checked.stdout.contains("1999"),
        "{checked}"
    );
    assert!(!checked.stdout.contains("cost:"), "{checked}");

    // A template that would send raw rows out is refused at submission.
    let raw_rows = submit(&example("templates/raw_incomes.toml"));
    assert_eq!(raw_rows.code, Some(3), "{raw_rows}");
    assert!(
        raw_rows.stdout.contains("shape.aggregate_only"),
        "{raw_rows}"
    );

    // The bureau's meter has one row per job, whatever its end.
    let meter = veil_ok(["meter", "list", "--data-dir", d]);
    let rows = table_rows(&meter.stdout);
    assert_eq!(rows.len(), 2, "{meter}");
    for job in [&released_job, &unapproved_job] {
        assert_eq!(
            rows.iter()
                .filter(|row| row.starts_with(job.as_str()))
                .count(),
            1,
            "job {job} in:\n{meter}"
        );
    }
    assert!(
        rows.iter()
            .any(|row| row.starts_with(released_job.as_str()) && row.contains("released")),
        "{meter}"
    );
    assert!(
        rows.iter()
            .any(|row| row.starts_with(unapproved_job.as_str()) && row.contains("rejected")),
        "{meter}"
    );

    let audit = veil_ok(["audit", "verify", "--data-dir", d]);
    assert!(audit.stdout.contains("audit log verified"), "{audit}");
}

#[test]
fn the_demo_tells_the_whole_story_on_small_data() {
    let kept = tempfile::tempdir().expect("temporary folder");
    let kept_dir = kept.path().join("store");
    let demo = veil_ok([
        "demo",
        "--rows",
        "3000",
        "--keep",
        kept_dir.to_str().expect("utf-8 path"),
    ]);
    for expected in [
        "released product",
        "rejected",
        "budget.exhausted",
        "audit verify",
        // Every command it prints is complete.
        "veil job run --data-dir ",
        "--operator jinyun-data-operations",
        // The sale, through `veil serve` and the SDK, and the buyer's offline verification.
        "veil product sell prod-",
        "veil client product buy prod-",
        "signature and digests verified offline against the platform key",
        // The month closed, with its statements.
        "veil settle --period ",
        "platform.csv",
        // The bureau reads each column's error at 95 % before it approves.
        "accuracy at 95 %",
    ] {
        assert!(
            demo.stdout.contains(expected),
            "`{expected}` missing:\n{demo}"
        );
    }
    // Every numeric column of every product the demo released comes with its 95 % interval,
    // in the CSV as in the manifest's column list.
    let mut products = 0;
    for entry in
        std::fs::read_dir(kept_dir.join("store").join("products")).expect("products folder")
    {
        let dir = entry.expect("entry").path();
        let Ok(manifest) = veil_sdk::manifest::read_manifest(&dir) else {
            continue;
        };
        products += 1;
        let names: Vec<&str> = manifest
            .manifest
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let header = std::fs::read_to_string(dir.join("result.csv")).expect("result.csv");
        let header = header.lines().next().unwrap_or_default().to_string();
        assert_eq!(header, names.join(","), "{}", dir.display());
        for column in &manifest.manifest.columns {
            if column.kind.starts_with("noisy") {
                for end in ["_ci_low", "_ci_high"] {
                    let interval = format!("{}{end}", column.name);
                    assert!(
                        names.contains(&interval.as_str()),
                        "{names:?} in {}",
                        dir.display()
                    );
                }
            }
        }
    }
    assert!(products >= 3, "the demo released {products} products");
}

/// An operator submits a WASM template by flags, the bureau approves it, and the job
/// releases a product — all through the binary.
#[test]
fn a_wasm_template_submitted_by_flags_runs_through_the_binary() {
    let fixture = support::Fixture::new(2_000);
    let data = fixture.store_path();
    let d = data.to_str().expect("utf-8 path");
    let schema = fixture.dir.path().join("credit_output.toml");
    std::fs::write(
        &schema,
        r#"
[[output]]
name = "industry"
type = "text"
keys = ["Coal mining", "Manufacturing", "Construction", "Wholesale and retail", "Transport and logistics", "Education", "Health and social work", "Public administration", "Agriculture", "Information technology", "Finance", "Hospitality"]

[[output]]
name = "risk_score"
type = "float"
bounds = [0, 100]
"#,
    )
    .expect("write the output schema");
    let module = Path::new(veil_testkit::GUESTS_DIR).join("credit_risk.wasm");
    let submitted = veil_ok([
        "template",
        "submit",
        "--data-dir",
        d,
        "--operator",
        support::OPERATOR,
        "--name",
        "credit_risk_by_industry",
        "--wasm",
        module.to_str().expect("utf-8 path"),
        "--input-sql",
        "SELECT legal_rep_id, industry, established_year, registered_capital, employees, credit_rating FROM enterprise_registry",
        "--output-schema",
        schema.to_str().expect("utf-8 path"),
        "--release-sql",
        "SELECT industry, COUNT(*) AS enterprises, AVG(risk_score) AS avg_risk FROM mapped GROUP BY industry",
        "--max-rows-per-unit",
        "3",
    ]);
    let template = word_after(&submitted.stdout, "`: ").to_string();
    veil_ok([
        "template",
        "approve",
        "--data-dir",
        d,
        &template,
        "--epsilon",
        "1",
        "--k",
        "5",
        "--max-groups",
        "3",
        "--max-rows",
        "3",
    ]);
    let released = veil_ok([
        "job",
        "run",
        "--data-dir",
        d,
        "--operator",
        support::OPERATOR,
        "--template",
        &template,
    ]);
    assert!(released.stdout.contains("released product"), "{released}");
    let product = PathBuf::from(word_after(&released.stdout, "files: "));
    let csv = std::fs::read_to_string(product.join("result.csv")).expect("the product's CSV");
    assert!(
        csv.starts_with(
            "industry,enterprises,enterprises_ci_low,enterprises_ci_high,avg_risk,avg_risk_ci_low,avg_risk_ci_high"
        ),
        "{csv}"
    );
    let meter = veil_ok(["meter", "list", "--data-dir", d]);
    assert!(meter.stdout.contains("fuel"), "{meter}");

    // A text output without a key set is refused before submission, naming the column.
    std::fs::write(
        &schema,
        "[[output]]\nname = \"industry\"\ntype = \"text\"\n",
    )
    .expect("write the output schema");
    let refused = veil([
        "template",
        "submit",
        "--data-dir",
        d,
        "--operator",
        support::OPERATOR,
        "--name",
        "leaky",
        "--wasm",
        module.to_str().expect("utf-8 path"),
        "--input-sql",
        "SELECT legal_rep_id, industry FROM enterprise_registry",
        "--output-schema",
        schema.to_str().expect("utf-8 path"),
        "--release-sql",
        "SELECT industry, COUNT(*) AS n FROM mapped GROUP BY industry",
    ]);
    assert_ne!(refused.code, Some(0), "{refused}");
    let text = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        text.contains("wasm.output_schema") && text.contains("`industry`"),
        "{refused}"
    );
}

/// The bureau adds principals; each key is printed once, and never listed.
#[test]
fn principals_get_a_key_once() {
    let temp = tempfile::tempdir().expect("temporary folder");
    let data = temp.path().join("store");
    let d = data.to_str().expect("utf-8 path");
    veil_ok(["init", "--data-dir", d]);
    let added = veil_ok([
        "principal",
        "add",
        "--data-dir",
        d,
        "--role",
        "buyer",
        "--name",
        "taiyuan-planning",
    ]);
    let key = word_after(&added.stdout, "stored): ").to_string();
    assert!(key.starts_with("veil_") && key.len() == 69, "{added}");
    let listed = veil_ok(["principal", "list", "--data-dir", d]);
    assert!(
        listed.stdout.contains("taiyuan-planning") && !listed.stdout.contains(&key[5..]),
        "{listed}"
    );
    let wrong = veil([
        "principal",
        "add",
        "--data-dir",
        d,
        "--role",
        "admin",
        "--name",
        "x",
    ]);
    assert_eq!(wrong.code, Some(2), "{wrong}");
    assert!(
        wrong.stderr.contains("bureau, provider, operator, buyer"),
        "{wrong}"
    );
    veil_ok(["principal", "revoke", "--data-dir", d, "taiyuan-planning"]);
    veil_ok(["audit", "verify", "--data-dir", d]);
}
