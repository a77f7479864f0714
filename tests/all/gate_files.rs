//! The release gate, case by case, from the files in `tests/gate/` (STYLE.md rule 10).
//!
//! Each file holds one rule family — `statement.test`, `shape.test`, `bounding.test`,
//! `k_anonymity.test`, `allowed.test` — written so that a bureau officer can read it: a query
//! goes in, the gate's verdict or the released product's shape comes out.
//!
//! # Format
//!
//! ```text
//! # A comment: a line that starts with `#`. Say in plain words why the case exists.
//! case <title>                  starts a case; titles are unique within a file
//! param <name>=<value>          optional, repeatable: a template parameter, declared as an
//!                               integer when the value parses as one, else as text
//! approve k=5 max_groups=1      optional: the bureau's approval, overriding
//!                               `support::approval()` key by key (`k`, `max_groups`,
//!                               `max_rows`, `epsilon`, `delta`, `price_fen`)
//! sql <query>                   the template's SQL; the lines indented under it continue it
//! expect                        the verdict, one item a line, up to a blank or `#` line:
//!   error <rule code>             refused; one line per rule named, in order, no repeats
//!   released rows=<n> [marked=<m>] columns=<name>:<type>,…
//!                                 released; the product's row count, how many rows are
//!                                 marked (public keys below the noisy threshold, NULL
//!                                 measures; omitted when none) and its columns
//!   released (reused …)           an identical earlier job's product came back unchanged
//!   failed                        the job failed without naming a rule (a platform fault)
//!   invalid <message>             the template or the approval was not accepted at all
//! ```
//!
//! Two verdicts are never right and appear only in a failing diff: `error (refused without
//! naming a rule)`, a refusal that breaks DESIGN.md's step 7, and `panicked: <message>`, a
//! job that panicked (caught, so that the file's other cases still run).
//!
//! # Running
//!
//! `cargo test -p veil-runtime --test all gate_files` runs every file; a case whose verdict
//! differs from its `expect` block fails the test with a diff naming the file, line and case.
//! `VEIL_BLESS=1 cargo test -p veil-runtime --test all gate_files` instead rewrites every
//! `expect` block in place with what the gate said; review the change with `git diff`.
//!
//! Each file runs its cases in order against one [`Fixture`]: demo data with [`FIXTURE_ROWS`]
//! social-insurance records from the fixed demo seed, granted ε 100 a month so that no case
//! runs out of budget, and with the test-only seeded noise (`Store::seed_test_noise`), so a
//! product's rows and marks are the same on every run. With public key sets (city, gender,
//! industry, credit rating) every key is a row, marked when its noisy count is below the
//! threshold; other keys appear only when their noisy count clears it. Which groups a person
//! over `max_groups` keeps is random per run, so such cases must not let a person reach more groups
//! than `max_groups`. A template's id is the hash of its SQL and parameters, so two cases of
//! one file must differ in one of them; the harness refuses duplicates, which would otherwise
//! reuse the first case's approval and product.
//!
//! Three promises need more than a verdict and have their own tests below: `CREATE EXTERNAL
//! TABLE` opens no file, `COPY … TO` creates none, and a group of k−1 units is absent.

use std::ops::Range;
#[cfg(target_os = "linux")]
use std::os::unix::fs::OpenOptionsExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use futures::FutureExt;
use veil_gate::rules::Refusal;
use veil_runtime::Error;
use veil_runtime::jobs::JobOutcome;
use veil_runtime::templates::ApprovalRequest;

use crate::support::{self, Fixture};

/// Social-insurance records in each file's fixture: enough for every city and gender to hold
/// well over k persons, few enough to build in about a second.
const FIXTURE_ROWS: u64 = 20_000;
/// Records in the fixtures of tests that are refused before any row is read.
const SMALL_FIXTURE_ROWS: u64 = 100;
/// The seed of the gate files' test-only noise.
const GATE_FILES_NOISE_SEED: u64 = 20_261_201;
/// Set to `1` to rewrite the `expect` blocks instead of comparing them.
const BLESS_VAR: &str = "VEIL_BLESS";
/// The gate files, each checked by its own test below.
const GATE_FILES: [&str; 5] = [
    "statement.test",
    "shape.test",
    "bounding.test",
    "k_anonymity.test",
    "allowed.test",
];

#[tokio::test]
async fn statement_file() {
    check_file("statement.test").await;
}

#[tokio::test]
async fn shape_file() {
    check_file("shape.test").await;
}

#[tokio::test]
async fn bounding_file() {
    check_file("bounding.test").await;
}

#[tokio::test]
async fn k_anonymity_file() {
    check_file("k_anonymity.test").await;
}

#[tokio::test]
async fn allowed_file() {
    check_file("allowed.test").await;
}

/// A new file in `tests/gate/` must not be silently skipped.
#[test]
fn every_gate_file_has_a_test() {
    let mut found: Vec<String> = std::fs::read_dir(gate_dir())
        .expect("tests/gate is readable")
        .map(|entry| entry.expect("directory entry").file_name())
        .filter_map(|name| name.to_str().map(str::to_string))
        .filter(|name| name.ends_with(".test"))
        .collect();
    found.sort();
    let mut listed: Vec<String> = GATE_FILES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        found, listed,
        "every tests/gate/*.test file needs a test in gate_files.rs and a place in GATE_FILES"
    );
}

/// The harness itself must be able to fail: a wrong expectation is reported with the file,
/// line and case, a right one is not, and blessing turns the wrong one right.
#[tokio::test]
async fn a_wrong_expectation_fails_and_bless_fixes_it() {
    let text = "\
# Both queries are refused; the second case expects the wrong verdict on purpose.
case raw rows
sql SELECT city, monthly_income FROM social_insurance
expect
error shape.aggregate_only

case raw districts, wrongly expected to be released
sql SELECT city, district FROM social_insurance
expect
released rows=1 columns=city:Utf8,district:Utf8
";
    let mut fixture = Fixture::new(SMALL_FIXTURE_ROWS);
    let report = run_cases("inline.test", text, &mut fixture, false)
        .await
        .expect_err("a wrong expectation must fail the test");
    assert!(
        report.contains("inline.test:7: case `raw districts, wrongly expected to be released`"),
        "the report names the file, line and case:\n{report}"
    );
    assert!(report.contains("-released rows=1"), "{report}");
    assert!(report.contains("+error shape.aggregate_only"), "{report}");
    assert!(!report.contains("case `raw rows`"), "{report}");

    let blessed = run_cases("inline.test", text, &mut fixture, true)
        .await
        .expect("blessing accepts any verdict");
    assert_eq!(
        blessed,
        text.replace(
            "released rows=1 columns=city:Utf8,district:Utf8",
            "error shape.aggregate_only"
        )
    );
    let again = run_cases("inline.test", &blessed, &mut fixture, false).await;
    assert_eq!(again, Ok(blessed.clone()), "a blessed file passes");
}

/// `CREATE EXTERNAL TABLE` over a host path is refused before anything opens the path. The
/// path is a FIFO: opening its write end without blocking succeeds only while some process
/// holds its read end, so a prober that never succeeds shows that no reader ever opened it.
/// (A reader that opens it the usual, blocking way waits for a writer — the prober — so even
/// the briefest read would be seen.)
#[cfg(target_os = "linux")]
#[tokio::test]
async fn create_external_table_opens_no_file() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let dir = tempfile::tempdir().expect("temporary folder");
    let fifo = dir.path().join("bait.csv");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo made {}", fifo.display());

    // The probe must be able to see a reader, or its silence below would prove nothing.
    assert!(!fifo_has_reader(&fifo), "nobody reads the FIFO yet");
    {
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open(&fifo)
            .expect("open the FIFO's read end");
        assert!(fifo_has_reader(&fifo), "the probe sees a reader");
    }
    assert!(!fifo_has_reader(&fifo), "the reader is gone again");

    let mut fixture = Fixture::new(SMALL_FIXTURE_ROWS);
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicBool::new(false));
    let probes = Arc::new(AtomicU64::new(0));
    let prober = {
        let (stop, opened, probes, fifo) =
            (stop.clone(), opened.clone(), probes.clone(), fifo.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if fifo_has_reader(&fifo) {
                    opened.store(true, Ordering::SeqCst);
                }
                probes.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        })
    };
    // Let the prober run at least once before the job starts.
    while probes.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let sql = format!(
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}'",
        fifo.display()
    );
    let outcome = fixture.run_sql(&sql, &[], support::approval()).await;
    stop.store(true, Ordering::SeqCst);
    prober.join().expect("the prober finishes");

    assert!(
        !opened.load(Ordering::SeqCst),
        "something opened the FIFO for reading while the job ran"
    );
    assert!(probes.load(Ordering::SeqCst) > 0, "the prober ran");
    assert_eq!(verdict(outcome).lines, ["error statement.read_only"]);
}

/// `COPY … TO` a host path is refused and leaves no file behind, whether it copies a constant
/// query or a whole granted table.
#[tokio::test]
async fn copy_to_creates_no_file() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut fixture = Fixture::new(SMALL_FIXTURE_ROWS);
    for (sql, out) in [
        ("COPY (SELECT 1) TO '{}'", dir.path().join("out.csv")),
        (
            "COPY social_insurance TO '{}' STORED AS PARQUET",
            dir.path().join("table.parquet"),
        ),
    ] {
        let sql = sql.replace("{}", &out.display().to_string());
        let outcome = fixture.run_sql(&sql, &[], support::approval()).await;
        assert_eq!(
            verdict(outcome).lines,
            ["error statement.read_only"],
            "{sql}"
        );
        assert!(!out.exists(), "{sql} created {}", out.display());
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("temporary folder is readable")
        .collect();
    assert!(left.is_empty(), "COPY left files behind: {left:?}");
}

/// A group with k−1 distinct persons behind it never leaves the domain: without a public key
/// set it is absent (the product is empty, not a refusal), with one its row is there but
/// marked (NULL measures). The decision is taken on a noisy count against a threshold τ ≥ k
/// set so that this happens except with probability δ (1e-6 here). The group is chosen from
/// the raw data (read here with plain DataFusion, as only a test may) so its true size is
/// known: one city, district and birth year whose women number `n` ≥ 2 and whose men number 0
/// or more than `n`.
#[tokio::test]
async fn a_group_of_k_minus_one_units_is_absent() {
    let mut fixture = Fixture::new(FIXTURE_ROWS);
    let small = small_group(&fixture.raw_path().join("social_insurance.parquet")).await;
    let women = u32::try_from(small.women).expect("a small count");
    assert!(small.men == 0 || small.men > small.women, "{small:?}");
    let params = [
        ("city", small.city.as_str()),
        ("district", small.district.as_str()),
        ("birth_year", &small.birth_year.to_string()),
    ];
    let filter = "city = :city AND district = :district AND birth_year = :birth_year";
    let approve = |k: u32| ApprovalRequest {
        k,
        ..support::approval()
    };

    // The women as the only group, under a key without a public key set: k = n + 1 leaves
    // an empty, signed product.
    let only = format!(
        "SELECT district, COUNT(DISTINCT person_id) AS women FROM social_insurance \
         WHERE {filter} AND gender = 'F' GROUP BY district"
    );
    let outcome = fixture.run_sql(&only, &params, approve(women + 1)).await;
    assert_eq!(
        verdict(outcome).lines,
        [
            "released rows=0 columns=district:Utf8View,women:Int64,women_ci_low:Int64,women_ci_high:Int64"
        ],
        "{small:?}"
    );

    // By gender (a public key set) with k = n + 1: both keys are rows, and the women's carries
    // no number.
    let by_gender = format!(
        "SELECT gender, COUNT(DISTINCT person_id) AS persons FROM social_insurance \
         WHERE {filter} GROUP BY gender"
    );
    let rows = released_rows(
        fixture
            .run_sql(&by_gender, &params, approve(women + 1))
            .await,
    );
    assert_eq!(genders(&rows), ["F", "M"], "every public key is a row");
    let persons = rows
        .column_by_name("persons")
        .expect("a persons column")
        .as_primitive::<Int64Type>();
    let gender = strings(
        rows.column_by_name("gender")
            .expect("a gender column")
            .as_ref(),
    );
    let women_row = gender.iter().position(|g| g == "F").expect("a row for F");
    assert!(
        persons.is_null(women_row),
        "k − 1 women are marked, not shown: {small:?}"
    );
}

/// Linux's `O_NONBLOCK`: with it, opening a FIFO's write end fails at once (ENXIO) unless a
/// reader holds it open, instead of waiting for one.
#[cfg(target_os = "linux")]
const O_NONBLOCK: i32 = 0o4000;

/// True if some process holds the FIFO's read end open right now.
#[cfg(target_os = "linux")]
fn fifo_has_reader(fifo: &Path) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(fifo)
        .is_ok()
}

/// One city, district and birth year with few women, counted on the raw data.
#[derive(Debug)]
struct SmallGroup {
    city: String,
    district: String,
    birth_year: i64,
    women: i64,
    men: i64,
}

async fn small_group(parquet: &Path) -> SmallGroup {
    use datafusion::prelude::{ParquetReadOptions, SessionContext};

    let ctx = SessionContext::new();
    ctx.register_parquet(
        "raw",
        parquet.to_str().expect("a UTF-8 path"),
        ParquetReadOptions::default(),
    )
    .await
    .expect("register the raw table");
    let batches = ctx
        .sql(
            "SELECT city, district, CAST(birth_year AS BIGINT) AS birth_year, women, men FROM (
                 SELECT city, district, birth_year,
                     COUNT(DISTINCT CASE WHEN gender = 'F' THEN person_id END) AS women,
                     COUNT(DISTINCT CASE WHEN gender = 'M' THEN person_id END) AS men
                 FROM raw GROUP BY city, district, birth_year)
             WHERE women >= 2 AND (men = 0 OR men > women)
             ORDER BY women DESC, city, district, birth_year LIMIT 1",
        )
        .await
        .expect("plan the raw count")
        .collect()
        .await
        .expect("run the raw count");
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .expect("the demo data has a small group of women");
    SmallGroup {
        city: strings(batch.column(0).as_ref())[0].clone(),
        district: strings(batch.column(1).as_ref())[0].clone(),
        birth_year: batch.column(2).as_primitive::<Int64Type>().value(0),
        women: batch.column(3).as_primitive::<Int64Type>().value(0),
        men: batch.column(4).as_primitive::<Int64Type>().value(0),
    }
}

/// A string column's values, whichever string type the reader chose.
fn strings(array: &dyn Array) -> Vec<String> {
    let utf8 = cast(array, &DataType::Utf8).expect("a string column");
    utf8.as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect()
}

fn released_rows(outcome: veil_runtime::Result<JobOutcome>) -> RecordBatch {
    match outcome {
        Ok(JobOutcome::Released {
            rows: Some(rows), ..
        }) => rows,
        other => panic!("expected a fresh release, got {other:?}"),
    }
}

/// The `gender` column of a product, sorted.
fn genders(rows: &RecordBatch) -> Vec<String> {
    let column = rows.column_by_name("gender").expect("a gender column");
    let mut values = strings(column.as_ref());
    values.sort();
    values
}

fn gate_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/gate")
}

/// Checks one gate file, or rewrites its `expect` blocks when [`BLESS_VAR`] is `1`.
async fn check_file(name: &str) {
    let path = gate_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let bless = std::env::var(BLESS_VAR).is_ok_and(|v| v == "1");
    let mut fixture = Fixture::new(FIXTURE_ROWS);
    // Seeded noise (a test-only source): which public keys fall below the noisy threshold is
    // then the same on every run, so the verdicts can be written down.
    fixture.store.seed_test_noise(GATE_FILES_NOISE_SEED);
    match run_cases(name, &text, &mut fixture, bless).await {
        Ok(new_text) if new_text != text => std::fs::write(&path, new_text)
            .unwrap_or_else(|e| panic!("blessing {}: {e}", path.display())),
        Ok(_) => {}
        Err(report) => panic!("{report}"),
    }
}

/// One case of a gate file.
#[derive(Debug)]
pub(crate) struct Case {
    pub(crate) title: String,
    /// Line of `case`, from 1.
    line: usize,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) approval: ApprovalRequest,
    pub(crate) sql: String,
    pub(crate) expected: Vec<String>,
    /// Where the expected lines are in the file (line indices from 0), for blessing.
    expected_at: Range<usize>,
}

/// What the gate did with one case, rendered for comparison, and its words for the report.
struct Verdict {
    lines: Vec<String>,
    detail: String,
}

/// Runs every case of a file. Returns the file's text — with every `expect` block replaced by
/// the actual verdict when `bless` — or a report of every case whose verdict differs.
async fn run_cases(
    name: &str,
    text: &str,
    fixture: &mut Fixture,
    bless: bool,
) -> Result<String, String> {
    let cases = parse(name, text)?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut report = String::new();
    // Back to front, so that replacing one block does not move the ones still to replace.
    let mut blessed: Vec<(Range<usize>, Vec<String>)> = Vec::new();
    for case in &cases {
        let params: Vec<(&str, &str)> = case
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // A panic inside the job is a gate bug; catching it reports it as this case's verdict
        // and lets the remaining cases run.
        let run = fixture.run_sql(&case.sql, &params, case.approval.clone());
        let actual = match AssertUnwindSafe(run).catch_unwind().await {
            Ok(outcome) => verdict(outcome),
            Err(panic) => Verdict {
                lines: vec![format!("panicked: {}", panic_message(panic.as_ref()))],
                detail: String::new(),
            },
        };
        if bless {
            blessed.push((case.expected_at.clone(), actual.lines));
        } else if actual.lines != case.expected {
            report.push_str(&format!(
                "{name}:{}: case `{}`\n  sql: {}\n",
                case.line,
                case.title,
                case.sql.replace('\n', "\n       ")
            ));
            for line in &case.expected {
                report.push_str(&format!("  -{line}\n"));
            }
            for line in &actual.lines {
                report.push_str(&format!("  +{line}\n"));
            }
            if !actual.detail.is_empty() {
                report.push_str(&format!(
                    "  the gate said: {}\n",
                    actual.detail.trim_end().replace('\n', "\n    ")
                ));
            }
            report.push('\n');
        }
    }
    if !report.is_empty() {
        return Err(format!(
            "gate file {name}: verdicts differ from the expect blocks (-expected +actual):\n\n{report}\
             If the new verdicts are right, rerun with {BLESS_VAR}=1 and review the diff."
        ));
    }
    for (range, actual) in blessed.into_iter().rev() {
        lines.splice(range, actual);
    }
    let mut new_text = lines.join("\n");
    if text.ends_with('\n') {
        new_text.push('\n');
    }
    Ok(new_text)
}

/// Renders a job's outcome as the lines of an `expect` block.
fn verdict(outcome: veil_runtime::Result<JobOutcome>) -> Verdict {
    let refused = |refusal: &Refusal| {
        let mut codes: Vec<&str> = Vec::new();
        for code in refusal.codes() {
            if !codes.contains(&code) {
                codes.push(code);
            }
        }
        let mut lines: Vec<String> = codes.iter().map(|c| format!("error {c}")).collect();
        if lines.is_empty() {
            // Every refusal must name a rule (DESIGN.md, step 7); show one that does not.
            lines.push("error (refused without naming a rule)".into());
        }
        Verdict {
            lines,
            detail: refusal.to_string(),
        }
    };
    match outcome {
        Ok(JobOutcome::Rejected { refusal, .. }) => refused(&refusal),
        Err(Error::Refused(refusal)) => refused(&refusal),
        Ok(JobOutcome::Released {
            rows: Some(batch),
            dir,
            ..
        }) => {
            let columns: Vec<String> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| format!("{}:{}", f.name(), f.data_type()))
                .collect();
            // Public keys below the noisy threshold are rows with NULL measures; the manifest
            // counts them.
            let marked = veil_sdk::manifest::read_manifest(&dir)
                .ok()
                .and_then(|m| m.manifest.privacy.groups_suppressed)
                .filter(|n| *n > 0)
                .map(|n| format!(" marked={n}"))
                .unwrap_or_default();
            Verdict {
                lines: vec![format!(
                    "released rows={}{marked} columns={}",
                    batch.num_rows(),
                    columns.join(",")
                )],
                detail: String::new(),
            }
        }
        Ok(JobOutcome::Released { rows: None, .. }) => Verdict {
            lines: vec!["released (reused an identical earlier job's product)".into()],
            detail: String::new(),
        },
        Ok(JobOutcome::Failed { reason, .. }) => Verdict {
            lines: vec!["failed".into()],
            detail: reason,
        },
        Ok(JobOutcome::Cancelled { .. }) => Verdict {
            lines: vec!["cancelled".into()],
            detail: String::new(),
        },
        Err(error) => Verdict {
            lines: vec![format!(
                "invalid {}",
                error.to_string().replace('\n', " ").trim()
            )],
            detail: String::new(),
        },
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// Reads a gate file; a malformed one is an error naming its line.
pub(crate) fn parse(name: &str, text: &str) -> Result<Vec<Case>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cases: Vec<Case> = Vec::new();
    let mut current: Option<Case> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let line_no = i + 1;
        let at = move |message: String| format!("{name}:{line_no}: {message}");
        if line.trim().is_empty() || line.starts_with('#') {
            i += 1;
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            return Err(at(
                "an indented line must continue the SQL right after `sql`".into(),
            ));
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        if word == "case" {
            if let Some(unfinished) = current.take() {
                return Err(at(format!(
                    "case `{}` has no `expect` line",
                    unfinished.title
                )));
            }
            if rest.is_empty() {
                return Err(at("give the case a title: `case <title>`".into()));
            }
            if cases.iter().any(|c| c.title == rest) {
                return Err(at(format!("a case titled `{rest}` already exists")));
            }
            current = Some(Case {
                title: rest.to_string(),
                line: i + 1,
                params: Vec::new(),
                approval: support::approval(),
                sql: String::new(),
                expected: Vec::new(),
                expected_at: 0..0,
            });
            i += 1;
            continue;
        }
        let Some(case) = current.as_mut() else {
            return Err(at(format!(
                "`{word}` outside a case; start one with `case <title>`"
            )));
        };
        match word {
            "param" => {
                let (key, value) = rest
                    .split_once('=')
                    .ok_or_else(|| at("write a parameter as `param <name>=<value>`".into()))?;
                case.params
                    .push((key.trim().to_string(), value.trim().to_string()));
            }
            "approve" => {
                for setting in rest.split_whitespace() {
                    set_approval(&mut case.approval, setting).map_err(at)?;
                }
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
                case.sql = sql
                    .into_iter()
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            "expect" => {
                if !rest.is_empty() {
                    return Err(at("put the verdict on the lines after `expect`".into()));
                }
                let start = i + 1;
                let mut end = start;
                while end < lines.len()
                    && !lines[end].trim().is_empty()
                    && !lines[end].starts_with('#')
                    && lines[end].split_whitespace().next() != Some("case")
                {
                    end += 1;
                }
                let mut case = current.take().expect("a case is open");
                if case.sql.is_empty() {
                    return Err(at(format!("case `{}` has no `sql`", case.title)));
                }
                if let Some(same) = cases
                    .iter()
                    .find(|c| c.sql == case.sql && c.params == case.params)
                {
                    return Err(at(format!(
                        "case `{}` has the same SQL and parameters as case `{}`, so it would \
                         reuse that template's approval and product; change the SQL (an alias \
                         will do)",
                        case.title, same.title
                    )));
                }
                case.expected = lines[start..end]
                    .iter()
                    .map(|l| l.trim().to_string())
                    .collect();
                case.expected_at = start..end;
                cases.push(case);
                i = end;
                continue;
            }
            other => {
                return Err(at(format!(
                    "unknown line `{other}`; a case has `param`, `approve`, `sql` and `expect` lines"
                )));
            }
        }
        i += 1;
    }
    if let Some(unfinished) = current {
        return Err(format!(
            "{name}: case `{}` has no `expect` line",
            unfinished.title
        ));
    }
    Ok(cases)
}

/// Applies one `key=value` of an `approve` line.
fn set_approval(approval: &mut ApprovalRequest, setting: &str) -> Result<(), String> {
    let (key, value) = setting
        .split_once('=')
        .ok_or_else(|| format!("write an approval setting as `key=value`, not `{setting}`"))?;
    let bad = || format!("`{setting}`: not a number");
    match key {
        "k" => approval.k = value.parse().map_err(|_| bad())?,
        "max_groups" => approval.max_groups = value.parse().map_err(|_| bad())?,
        "max_rows" => approval.max_rows = value.parse().map_err(|_| bad())?,
        "epsilon" => approval.epsilon = value.parse().map_err(|_| bad())?,
        "delta" => approval.delta = value.parse().map_err(|_| bad())?,
        "price_fen" => approval.price_per_run_fen = value.parse().map_err(|_| bad())?,
        other => {
            return Err(format!(
                "unknown approval setting `{other}`; use k, max_groups, max_rows, epsilon, delta or price_fen"
            ));
        }
    }
    Ok(())
}
