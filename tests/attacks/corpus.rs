//! The attack corpus, `tests/attacks/*.test`, run through `veil serve` and its HTTP API.
//!
//! # Format
//!
//! ```text
//! # A comment. Say what the attacker hopes to learn.
//! case <title>               starts a case; titles are unique across the corpus
//! param <name>=<value>       optional, repeatable: a template parameter, declared as an
//!                            integer when the value parses as one, else as text
//! approve k=5 max_groups=1   optional: the bureau's approval, key by key over the default
//!                            (ε 0.5, δ 1e-6, k 5, three groups and rows per unit, ¥1 a run);
//!                            keys are the JSON fields of POST /v1/templates/{id}/approve
//! submit {"epsilon": 50}     optional: JSON fields added to the POST /v1/jobs body
//! sql <query>                the template's SQL; lines indented under it continue it
//! expect <verdict>           one of:
//!   refused <rule> …           the job ends `rejected` naming (at least) these rules, before
//!                              any ε is spent
//!   released [rows=N] [marked=M]
//!                              the job ends `released` (an empty product is a release); the
//!                              product's rows and marked rows, when given
//!   failed                     the job ends `failed` with the generic message, ε spent
//!   invalid                    the server did not accept the template, the approval or the
//!                              job submission (HTTP 4xx)
//! ```
//!
//! Whatever the verdict, no canary value (see `canary`) may appear in anything the case makes
//! visible: the job, template, product and meter views, every product file (Parquet decoded
//! too), and — once for the whole corpus — every listing of the API, every file of the store
//! outside the datasets' folder, the server's stdout and stderr, and the command line's
//! `job list`, `job show`, `meter list`, `product list` and `template list`. The corpus's own
//! SQL and parameters never contain a canary, so anything found came out of the data.
//!
//! Every case runs on a real server with real noise: a `rows=`/`marked=` is written only where
//! the outcome is certain up to δ (public key sets, or groups of one or two persons).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Map, Value, json};
use veil_gate::FAILED_MESSAGE;

use crate::canary::{self, Domain, assert_clean, leaks};
use crate::server::{Answer, Http, Server, submit_template};
use crate::support::veil_bin;

/// ε of one run under the default approval.
const DEFAULT_EPSILON: f64 = 0.5;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/attacks")
}

/// One case of a corpus file.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub file: String,
    pub line: usize,
    pub title: String,
    pub params: Vec<(String, String)>,
    pub approval: Map<String, Value>,
    pub submit: Map<String, Value>,
    pub sql: String,
    pub expect: String,
}

impl Case {
    fn epsilon(&self) -> f64 {
        self.approval["epsilon"].as_f64().expect("ε is a number")
    }
}

fn default_approval() -> Map<String, Value> {
    let Value::Object(map) = json!({
        "epsilon": DEFAULT_EPSILON,
        "delta": 1e-6,
        "k": 5,
        "max_groups": 3,
        "max_rows": 3,
        "price_per_run_fen": 100,
    }) else {
        unreachable!("an object literal")
    };
    map
}

/// Reads a corpus file; a malformed one is an error naming its line.
pub(crate) fn parse(file: &str, text: &str) -> Result<Vec<Case>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cases: Vec<Case> = Vec::new();
    let mut current: Option<Case> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let line_no = i + 1;
        let at = move |message: String| format!("{file}:{line_no}: {message}");
        if line.trim().is_empty() || line.starts_with('#') {
            i += 1;
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            return Err(at("an indented line must continue the SQL".into()));
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        if word == "case" {
            if let Some(open) = current.take() {
                return Err(at(format!("case `{}` has no `expect` line", open.title)));
            }
            if rest.is_empty() {
                return Err(at("give the case a title".into()));
            }
            current = Some(Case {
                file: file.to_string(),
                line: i + 1,
                title: rest.to_string(),
                params: Vec::new(),
                approval: default_approval(),
                submit: Map::new(),
                sql: String::new(),
                expect: String::new(),
            });
            i += 1;
            continue;
        }
        let Some(case) = current.as_mut() else {
            return Err(at(format!("`{word}` outside a case")));
        };
        match word {
            "param" => {
                let (k, v) = rest
                    .split_once('=')
                    .ok_or_else(|| at("write `param <name>=<value>`".into()))?;
                case.params
                    .push((k.trim().to_string(), v.trim().to_string()));
            }
            "approve" => {
                for setting in rest.split_whitespace() {
                    let (k, v) = setting
                        .split_once('=')
                        .ok_or_else(|| at(format!("`{setting}`: write key=value")))?;
                    let value: Value = serde_json::from_str(v)
                        .map_err(|_| at(format!("`{setting}`: the value must be JSON")))?;
                    case.approval.insert(k.to_string(), value);
                }
            }
            "submit" => {
                let Value::Object(extra) = serde_json::from_str(rest)
                    .map_err(|e| at(format!("`submit` takes a JSON object: {e}")))?
                else {
                    return Err(at("`submit` takes a JSON object".into()));
                };
                case.submit.extend(extra);
            }
            "sql" => {
                let mut sql = vec![rest.to_string()];
                while i + 1 < lines.len()
                    && lines[i + 1].starts_with(char::is_whitespace)
                    && !lines[i + 1].trim().is_empty()
                {
                    i += 1;
                    sql.push(lines[i].trim().to_string());
                }
                case.sql = sql.join("\n");
            }
            "expect" => {
                let word = rest.split_whitespace().next().unwrap_or_default();
                if !matches!(word, "refused" | "released" | "failed" | "invalid") {
                    return Err(at(
                        "expect refused <rule>…, released [rows=N] [marked=M], failed or invalid"
                            .into(),
                    ));
                }
                let mut case = current.take().expect("a case is open");
                if case.sql.is_empty() {
                    return Err(at(format!("case `{}` has no `sql`", case.title)));
                }
                case.expect = rest.to_string();
                cases.push(case);
            }
            other => return Err(at(format!("unknown line `{other}`"))),
        }
        i += 1;
    }
    if let Some(open) = current {
        return Err(format!(
            "{file}: case `{}` has no `expect` line",
            open.title
        ));
    }
    Ok(cases)
}

/// Every case of every `tests/attacks/*.test` file, in file order.
pub(crate) fn load_corpus() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/attacks is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a file name")
            .to_string();
        let text = std::fs::read_to_string(&path).expect("a corpus file");
        cases.extend(parse(&name, &text).unwrap_or_else(|e| panic!("{e}")));
    }
    let mut titles = std::collections::BTreeSet::new();
    for case in &cases {
        assert!(
            titles.insert(case.title.clone()),
            "{}:{}: a case titled `{}` already exists",
            case.file,
            case.line,
            case.title
        );
        let text = format!("{} {:?} {:?}", case.sql, case.params, case.submit);
        assert!(
            leaks(text.as_bytes()).is_empty(),
            "{}:{}: the case itself holds a canary value ({:?}); the scan would prove nothing",
            case.file,
            case.line,
            leaks(text.as_bytes())
        );
    }
    cases
}

/// What happened to one case, as far as the operator can see.
struct Outcome {
    verdict: String,
    /// Why, for the report (the server's message).
    detail: String,
    job: Option<Value>,
}

/// Does `actual` satisfy `expected` (see the format)?
fn matches(expected: &str, actual: &str) -> bool {
    let mut e = expected.split_whitespace();
    let mut a = actual.split_whitespace();
    let (Some(ew), Some(aw)) = (e.next(), a.next()) else {
        return false;
    };
    if ew != aw {
        return false;
    }
    let actual_words: Vec<&str> = a.collect();
    match ew {
        "refused" | "released" => e.all(|word| actual_words.contains(&word)),
        _ => true,
    }
}

/// Runs every case through one server and checks verdicts, ε and canaries; returns the report
/// of what differs (empty when all is well).
async fn run_corpus(domain: &Domain, server: &Server, cases: &[Case]) -> String {
    let operator = Http::new(server, &domain.keys.operator);
    let bureau = Http::new(server, &domain.keys.bureau);
    let mut report = String::new();

    // Submit everything first, so the server's workers run the jobs while we wait.
    let mut submitted: Vec<Result<String, Answer>> = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        submitted.push(submit_case(&operator, &bureau, index, case).await);
    }

    let mut outcomes = Vec::new();
    for job in &submitted {
        let outcome = match job {
            // The gate's static checks run at submission too (one domain call for every
            // front end), so a template they refuse never becomes a job: its refusal is the
            // case's verdict, with the same rule names a job's refusal would carry.
            Err(answer) => {
                assert_clean("a refused submission", answer.body.as_bytes());
                Outcome {
                    verdict: refusal_verdict(answer),
                    detail: answer.body.clone(),
                    job: None,
                }
            }
            Ok(id) => {
                let job = operator.wait_job(id, Duration::from_secs(180)).await;
                verdict_of(&operator, &job).await
            }
        };
        outcomes.push(outcome);
    }

    let meter = bureau.get("/meter").await.ok("meter").json();
    let micro_epsilon_of = |job_id: &str| -> i64 {
        meter
            .as_array()
            .expect("a meter list")
            .iter()
            .filter(|m| m["job_id"] == job_id)
            .map(|m| m["micro_epsilon"].as_i64().unwrap_or(0))
            .sum()
    };
    let wall_ms_of = |job_id: &Value| -> u64 {
        meter
            .as_array()
            .expect("a meter list")
            .iter()
            .filter(|m| &m["job_id"] == job_id)
            .filter_map(|m| m["wall_ms"].as_u64())
            .sum()
    };
    let mut spent_expected: i64 = 0;
    for (case, outcome) in cases.iter().zip(&outcomes) {
        // Shown with --nocapture (or when the test fails): each case's verdict and wall time.
        let wall_ms = outcome.job.as_ref().map_or(0, |job| wall_ms_of(&job["id"]));
        println!(
            "{}:{}: {} ({wall_ms} ms)",
            case.file, case.line, outcome.verdict
        );
        let mut problems = Vec::new();
        if !matches(&case.expect, &outcome.verdict) {
            problems.push(format!("-{}\n  +{}", case.expect, outcome.verdict));
        }
        if let Some(job) = &outcome.job {
            let id = job["id"].as_str().expect("a job id");
            let spent = micro_epsilon_of(id);
            let approved = (case.epsilon() * 1e6).round() as i64;
            let state = job["state"].as_str().unwrap_or_default();
            let want = match state {
                "released" | "failed" => approved,
                _ => 0,
            };
            spent_expected += want;
            if spent != want {
                problems.push(format!(
                    "the job ended {state} and its meter says με {spent}; expected {want}"
                ));
            }
            if state == "failed" && job["failure"] != FAILED_MESSAGE {
                problems.push(format!(
                    "a failed job must show only the generic message, not {}",
                    job["failure"]
                ));
            }
        }
        if !problems.is_empty() {
            report.push_str(&format!(
                "{}:{}: case `{}`\n  sql: {}\n  {}\n",
                case.file,
                case.line,
                case.title,
                case.sql.replace('\n', "\n       "),
                problems.join("\n  ")
            ));
            if !outcome.detail.is_empty() {
                report.push_str(&format!("  the server said: {}\n", outcome.detail));
            }
            report.push('\n');
        }
    }

    // The budget the operator sees is exactly the ε of the jobs that released or failed:
    // nothing for a refusal.
    if let Some(template) = submitted.iter().flatten().next() {
        let job = operator
            .get(&format!("/jobs/{template}"))
            .await
            .ok("a job")
            .json();
        let dry = operator
            .post(
                "/jobs/dry-run",
                &json!({ "template": job["template_id"], "params": job["params"] }),
            )
            .await
            .ok("dry run")
            .json();
        let spent = (dry["epsilon_spent"].as_f64().expect("ε spent") * 1e6).round() as i64;
        if spent != spent_expected {
            report.push_str(&format!(
                "the grant's ε spent is {spent} με; the released and failed cases account for {spent_expected} με\n"
            ));
        }
    }
    report
}

/// "refused <rules>" for an answer that refused with named rules (HTTP 422, kind `refused`),
/// else "invalid HTTP <status>".
fn refusal_verdict(answer: &Answer) -> String {
    let body: Value = serde_json::from_str(&answer.body).unwrap_or_default();
    if answer.status != 422 || body["kind"] != "refused" {
        return format!("invalid HTTP {}", answer.status);
    }
    let mut rules: Vec<String> = Vec::new();
    for v in body["violations"].as_array().into_iter().flatten() {
        let rule = v["rule"].as_str().unwrap_or("?").to_string();
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    format!("refused {}", rules.join(" "))
}

/// Submits, approves and queues one case; the job id, or the answer that refused it.
async fn submit_case(
    operator: &Http,
    bureau: &Http,
    index: usize,
    case: &Case,
) -> Result<String, Answer> {
    let name = format!("attack-{index:03}");
    let template = submit_template(operator, &name, &case.sql, &case.params).await?;
    let approved = bureau
        .post(
            &format!("/templates/{template}/approve"),
            &Value::Object(case.approval.clone()),
        )
        .await;
    if !(200..300).contains(&approved.status) {
        return Err(approved);
    }
    let params: BTreeMap<&str, &str> = case
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut body = json!({ "template": template, "params": params });
    if let Value::Object(map) = &mut body {
        map.extend(case.submit.clone());
    }
    let answer = operator.post("/jobs", &body).await;
    if answer.status != 202 {
        return Err(answer);
    }
    Ok(answer.json()["job"]["id"]
        .as_str()
        .expect("a job id")
        .to_string())
}

/// The verdict of an ended job, after scanning everything the operator can read about it.
async fn verdict_of(operator: &Http, job: &Value) -> Outcome {
    let id = job["id"].as_str().expect("a job id");
    let raw = operator.get(&format!("/jobs/{id}")).await.ok("job");
    assert_clean(&format!("GET /v1/jobs/{id}"), raw.body.as_bytes());
    let template = operator
        .get(&format!(
            "/templates/{}",
            job["template_id"].as_str().unwrap_or_default()
        ))
        .await;
    assert_clean("the job's template", template.body.as_bytes());
    // The pre-flight of the same request (it reads no row, so it must not carry one either).
    let dry = operator
        .post(
            "/jobs/dry-run",
            &json!({ "template": job["template_id"], "params": job["params"] }),
        )
        .await;
    assert_clean("the job's pre-flight", dry.body.as_bytes());
    let state = job["state"].as_str().unwrap_or_default();
    let detail = serde_json::to_string(&job["violations"]).unwrap_or_default();
    let verdict = match state {
        "rejected" => {
            let mut rules: Vec<String> = Vec::new();
            for v in job["violations"].as_array().into_iter().flatten() {
                let rule = v["rule"].as_str().unwrap_or("?").to_string();
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
            format!("refused {}", rules.join(" "))
        }
        "released" => {
            let product = job["product_id"]
                .as_str()
                .expect("a released job's product");
            let (rows, marked) = scan_product(operator, product).await;
            format!("released rows={rows} marked={marked}")
        }
        other => other.to_string(),
    };
    Outcome {
        verdict,
        detail: match state {
            "failed" => job["failure"].to_string(),
            _ => detail,
        },
        job: Some(job.clone()),
    }
}

/// Downloads every file of `product` and scans it; returns its rows and marked rows.
pub(crate) async fn scan_product(operator: &Http, product: &str) -> (u64, u64) {
    let view = operator
        .get(&format!("/products/{product}"))
        .await
        .ok("product");
    assert_clean(&format!("GET /v1/products/{product}"), view.body.as_bytes());
    let view = view.json();
    let mut marked = 0;
    let dir = tempfile::tempdir().expect("a download folder");
    for file in view["files"].as_array().expect("a file list") {
        let name = file["name"].as_str().expect("a file name");
        let (status, bytes) = operator
            .get_bytes(&format!("/products/{product}/files/{name}"))
            .await;
        assert_eq!(status, 200, "downloading {name} of {product}");
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).expect("keep the download");
        let scanned = if name.ends_with(".parquet") {
            canary::parquet_as_text(&path)
        } else {
            bytes.clone()
        };
        assert_clean(&format!("{name} of product {product}"), &scanned);
        if name == "manifest.json" {
            let manifest: Value = serde_json::from_slice(&bytes).expect("a JSON manifest");
            marked = find_key(&manifest, "groups_suppressed")
                .and_then(Value::as_u64)
                .unwrap_or(0);
        }
    }
    (view["rows"].as_u64().expect("a row count"), marked)
}

fn find_key<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|v| find_key(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// Every file under `dir`, recursively, except under `skip`.
fn files_under(dir: &Path, skip: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == skip {
            continue;
        }
        if path.is_dir() {
            out.extend(files_under(&path, skip));
        } else {
            out.push(path);
        }
    }
    out
}

/// Everything the API lists, for every role, scanned once the corpus has run.
async fn scan_listings(domain: &Domain, server: &Server) {
    let operator = Http::new(server, &domain.keys.operator);
    let bureau = Http::new(server, &domain.keys.bureau);
    let provider = Http::new(server, &domain.keys.provider);
    for (who, http, paths) in [
        (
            "operator",
            &operator,
            &[
                "/jobs",
                "/meter",
                "/products",
                "/templates",
                "/grants",
                "/datasets",
                "/me",
            ][..],
        ),
        (
            "bureau",
            &bureau,
            &[
                "/jobs",
                "/meter",
                "/products",
                "/templates",
                "/grants",
                "/purchases",
            ][..],
        ),
        ("provider", &provider, &["/usage", "/datasets"][..]),
    ] {
        for path in paths {
            let answer = http.get(path).await;
            assert!(
                (200..300).contains(&answer.status),
                "{who} GET {path}: {} {}",
                answer.status,
                answer.body
            );
            assert_clean(&format!("{who} GET /v1{path}"), answer.body.as_bytes());
        }
    }
}

/// The store's files outside the datasets' folder: the state database and its journal, the
/// audit checkpoints, every product folder, keys and temporaries.
fn scan_store_files(domain: &Domain) {
    let root = domain.root();
    let data = root.join("data");
    let files = files_under(&root, &data);
    // The scan must see the state database and the products, or it proves nothing.
    for needed in ["veil.db", "result.parquet", "result.csv", "manifest.json"] {
        assert!(
            files
                .iter()
                .any(|f| f.file_name().is_some_and(|n| n == needed)),
            "no {needed} under {}: {files:?}",
            root.display()
        );
    }
    for path in files {
        let bytes = std::fs::read(&path).unwrap_or_default();
        let scanned = if path.extension().is_some_and(|e| e == "parquet") {
            canary::parquet_as_text(&path)
        } else {
            bytes
        };
        assert_clean(&path.display().to_string(), &scanned);
    }
}

/// The command line's views of the jobs, the meter, the products and the templates.
fn scan_command_line(domain: &Domain, job_ids: &[String]) {
    let root = domain.root();
    let run = |args: &[&str]| {
        let out = Command::new(veil_bin())
            .args(args)
            .arg("--data-dir")
            .arg(&root)
            .output()
            .expect("veil runs");
        let mut all = out.stdout.clone();
        all.extend(&out.stderr);
        assert_clean(&format!("veil {}", args.join(" ")), &all);
        out
    };
    for args in [
        &["job", "list"][..],
        &["meter", "list"],
        &["product", "list"],
        &["template", "list"],
        &["grant", "list"],
        &["ledger", "list"],
    ] {
        let out = run(args);
        assert!(
            out.status.success(),
            "veil {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for id in job_ids {
        run(&["job", "show", id]);
    }
    let verify = run(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "veil audit verify after the corpus: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// The whole corpus through `veil serve`: every verdict as written, ε only for what released
/// or failed, and no canary anywhere an operator, buyer or log reader looks.
#[tokio::test(flavor = "multi_thread")]
async fn the_attack_corpus_leaks_no_canary() {
    let cases = load_corpus();
    assert!(
        cases.len() > 50,
        "the corpus has only {} cases",
        cases.len()
    );
    let domain = Domain::new();
    let server = Server::start(&domain.root(), 2);
    let report = run_corpus(&domain, &server, &cases).await;
    scan_listings(&domain, &server).await;
    let operator = Http::new(&server, &domain.keys.operator);
    let jobs = operator.get("/jobs").await.ok("jobs").json();
    let job_ids: Vec<String> = jobs
        .as_array()
        .expect("a job list")
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_string))
        .collect();
    let health = reqwest::get(format!("{}/v1/health", server.url))
        .await
        .expect("the server still answers");
    assert_eq!(health.status(), 200, "the server still answers");
    let log = server.stop();
    assert_clean("the server's stdout and stderr", &log);
    scan_store_files(&domain);
    scan_command_line(&domain, &job_ids);
    assert!(
        report.is_empty(),
        "attack corpus: verdicts differ (-expected +actual):\n\n{report}"
    );
}

/// The harness can fail: a wrong verdict is reported with its file, line and case, and a
/// canary in a scanned text is found (also in lower case and as a bare token).
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_verdict_and_a_planted_canary_are_caught() {
    let text = "\
case refused as it should be
sql SELECT city, full_name, COUNT(*) AS n FROM citizens GROUP BY city, full_name
expect refused statement.identifier

case wrongly expected to be released
sql SELECT city, MAX(monthly_income) AS top FROM citizens GROUP BY city
expect released rows=11
";
    let cases = parse("inline.test", text).expect("parses");
    let domain = Domain::new();
    let server = Server::start(&domain.root(), 1);
    let report = run_corpus(&domain, &server, &cases).await;
    drop(server);
    assert!(
        report.contains("inline.test:5: case `wrongly expected to be released`"),
        "{report}"
    );
    assert!(report.contains("-released rows=11"), "{report}");
    assert!(report.contains("+refused shape.min_max"), "{report}");
    assert!(!report.contains("refused as it should be"), "{report}");

    let c = &canary::CANARIES[0];
    for planted in [
        c.person_id.to_string(),
        c.district.to_lowercase(),
        format!("x{}y", &c.full_name[c.full_name.len() - 6..]),
        format!("income={}", c.monthly_income),
    ] {
        assert!(!leaks(planted.as_bytes()).is_empty(), "{planted}");
    }
    assert!(!leaks(&c.monthly_income.to_le_bytes()).is_empty());
    assert!(!leaks(&(c.registered_capital as f64).to_le_bytes()).is_empty());
    assert!(leaks(b"Taiyuan 1911 persons=3 income=98765430").is_empty());
}
