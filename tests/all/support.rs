//! Shared fixtures: a fresh store with the demo data registered and granted.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use chrono::{Days, NaiveDate};
use tempfile::TempDir;
use veil_runtime::Result;
use veil_runtime::catalog::{self, Policy};
use veil_runtime::grants::{self, Disposition, Grant, GrantRequest};
use veil_runtime::jobs::{self, JobOutcome, JobRequest};
use veil_runtime::store::Store;
use veil_runtime::templates::{self, ApprovalRequest, ParamSpec, ParamType, TemplateSpec};
use veil_testkit::demo_data;

pub(crate) const OPERATOR: &str = "op-test";
pub(crate) const SOCIAL_POLICY: &str =
    include_str!("../../examples/policies/social_insurance.toml");
pub(crate) const ENTERPRISE_POLICY: &str =
    include_str!("../../examples/policies/enterprise_registry.toml");

/// A store in a temporary folder, with `social_insurance` and `enterprise_registry` from the
/// demo generator registered and granted to [`OPERATOR`] with a large budget.
pub(crate) struct Fixture {
    pub dir: TempDir,
    pub store: Store,
    pub grant: Grant,
}

impl Fixture {
    /// Demo data with `rows` social-insurance records, ε 100 per month.
    pub(crate) fn new(rows: u64) -> Self {
        Self::with_budget(rows, 100.0)
    }

    /// A term around today, within the longest term a grant may have.
    pub(crate) fn with_budget(rows: u64, epsilon_per_month: f64) -> Self {
        let today = veil_runtime::clock::today();
        Self::with_term(
            rows,
            epsilon_per_month,
            today - Days::new(30),
            today + Days::new(335),
        )
    }

    /// [`Fixture::new`], calling `prepare` on the store's folder before the store is created in
    /// it (to mount a small file system there, say); returns what `prepare` returned too.
    pub(crate) fn prepared<G>(rows: u64, prepare: impl FnOnce(&Path) -> G) -> (Self, G) {
        let today = veil_runtime::clock::today();
        let mut prepared = None;
        let fixture = Self::build(
            rows,
            100.0,
            today - Days::new(30),
            today + Days::new(335),
            |store| prepared = Some(prepare(store)),
        );
        (fixture, prepared.expect("prepare ran"))
    }

    /// A grant valid from `from` to `to` (both days included).
    pub(crate) fn with_term(
        rows: u64,
        epsilon_per_month: f64,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Self {
        Self::build(rows, epsilon_per_month, from, to, |_| {})
    }

    fn build(
        rows: u64,
        epsilon_per_month: f64,
        from: NaiveDate,
        to: NaiveDate,
        prepare: impl FnOnce(&Path),
    ) -> Self {
        use_veil_for_jobs();
        let dir = tempfile::tempdir().expect("temporary folder");
        let raw = dir.path().join("raw");
        demo_data::write_demo_data(rows, &raw, demo_data::DEMO_SEED).expect("demo data");
        let store_dir = dir.path().join("store");
        std::fs::create_dir_all(&store_dir).expect("store folder");
        prepare(&store_dir);
        let mut store = Store::init(&store_dir).expect("store");
        for (name, policy) in [
            ("social_insurance", SOCIAL_POLICY),
            ("enterprise_registry", ENTERPRISE_POLICY),
        ] {
            catalog::register(
                &mut store,
                name,
                &raw.join(format!("{name}.parquet")),
                Policy::parse(policy).expect("policy"),
            )
            .expect("register");
        }
        let grant = grants::create(
            &mut store,
            GrantRequest {
                operator: OPERATOR.into(),
                datasets: vec!["social_insurance".into(), "enterprise_registry".into()],
                purpose: "integration tests".into(),
                valid_from: from,
                valid_to: to,
                epsilon_per_month,
                delta_per_month: 0.5,
                disposition: Disposition::Archive,
                ownership: veil_runtime::grants::Ownership::Operator,
            },
        )
        .expect("grant");
        Self { dir, store, grant }
    }

    pub(crate) fn store_path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub(crate) fn raw_path(&self) -> PathBuf {
        self.dir.path().join("raw")
    }

    /// Submits `sql` as a template (parameters declared from `params`: integer if the value
    /// parses as one, else text), approves it with `approval`, and runs it.
    pub(crate) async fn run_sql(
        &mut self,
        sql: &str,
        params: &[(&str, &str)],
        approval: ApprovalRequest,
    ) -> Result<JobOutcome> {
        let template_id = submit_and_approve(&mut self.store, sql, params, approval)?;
        self.run(&template_id, params).await
    }

    /// Runs template `template` as [`OPERATOR`] under the one grant.
    pub(crate) async fn run(
        &mut self,
        template: &str,
        params: &[(&str, &str)],
    ) -> Result<JobOutcome> {
        run_template(&mut self.store, template, params).await
    }
}

/// A fresh store in `dir/store` with the Parquet `file` registered as `name` under the policy
/// text `policy`, granted to [`OPERATOR`] for a term around today (ε 100, δ 0.5 a month).
pub(crate) fn store_with_dataset(dir: &Path, name: &str, file: &Path, policy: &str) -> Store {
    use_veil_for_jobs();
    let mut store = Store::init(&dir.join("store")).expect("store");
    catalog::register(
        &mut store,
        name,
        file,
        Policy::parse(policy).expect("policy"),
    )
    .expect("register");
    let today = chrono::Utc::now().date_naive();
    grants::create(
        &mut store,
        GrantRequest {
            operator: OPERATOR.into(),
            datasets: vec![name.into()],
            purpose: format!("tests on {name}"),
            valid_from: today - Days::new(30),
            valid_to: today + Days::new(30),
            epsilon_per_month: 100.0,
            delta_per_month: 0.5,
            disposition: Disposition::Archive,
            ownership: veil_runtime::grants::Ownership::Operator,
        },
    )
    .expect("grant");
    store
}

/// Runs template `template` in `store` as [`OPERATOR`], under the grant that covers it.
pub(crate) async fn run_template(
    store: &mut Store,
    template: &str,
    params: &[(&str, &str)],
) -> Result<JobOutcome> {
    jobs::run(
        store,
        JobRequest {
            operator: OPERATOR.into(),
            template: template.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            grant: None,
        },
    )
    .await
}

/// Submits and approves a template for [`OPERATOR`]; returns its id.
pub(crate) fn submit_and_approve(
    store: &mut Store,
    sql: &str,
    params: &[(&str, &str)],
    approval: ApprovalRequest,
) -> Result<String> {
    let spec = TemplateSpec {
        name: "test".into(),
        sql: sql.into(),
        params: params
            .iter()
            .map(|(name, value)| ParamSpec {
                name: name.to_string(),
                kind: if value.parse::<i64>().is_ok() {
                    ParamType::Integer
                } else {
                    ParamType::Text
                },
                allowed: None,
            })
            .collect(),
        wasm: None,
        versions: Default::default(),
    };
    let template = templates::submit(store, OPERATOR, spec)?;
    if template.state == templates::TemplateState::Submitted {
        templates::approve(store, template.id.as_str(), approval)?;
    }
    Ok(template.id.to_string())
}

/// ε 1, δ 1e-6, k 5, three groups and three rows per unit, ¥1 per run.
pub(crate) fn approval() -> ApprovalRequest {
    ApprovalRequest {
        epsilon: 1.0,
        delta: 1e-6,
        k: 5,
        max_groups: 3,
        max_rows: 3,
        price_per_run_fen: 100,
        ..ApprovalRequest::default()
    }
}

/// Jobs run in a child process of a program that answers `__job-exec` (see `exec`); this test
/// harness does not, so jobs run from it use the `veil` binary built for these tests.
pub(crate) fn use_veil_for_jobs() {
    veil_gate::job::use_executable(veil_bin());
}

/// The address `veil serve` announces on its first line of output (`… http://127.0.0.1:PORT`).
pub(crate) fn server_url(first_line: &str) -> String {
    let url = first_line
        .trim()
        .rsplit(' ')
        .next()
        .expect("an address")
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{first_line}");
    url
}

/// The `veil` binary built for these tests.
pub(crate) fn veil_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_veil"))
}

/// What one `veil` invocation printed and how it ended.
pub(crate) struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(output: std::process::Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A tmpfs mounted over a folder for one test (`options` as for `mount -o`); unmounted when
/// dropped, lazily, so a file still open elsewhere does not keep it. Mounting needs root:
/// without it the test fails saying what it needs (`need`), rather than passing untested.
pub(crate) struct Tmpfs {
    pub at: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(at: &Path, options: &str, need: &str) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Self {
                at: at.to_path_buf(),
            },
            Ok(out) => panic!(
                "this test needs {need}: `mount -t tmpfs -o {options}` failed ({}); run the tests as root or in a container with CAP_SYS_ADMIN",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!(
                "this test needs {need}: cannot run `mount` ({e}); install util-linux and run the tests as root"
            ),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status();
    }
}

/// Makes (once per build folder, in `target/VENV`) a Python environment holding `requirement`
/// from PyPI and returns its program `bin/PROGRAM`. Needs `python3` with `venv` (`.ci/run`
/// installs it). Callers that may run at the same time hold a lock of their own around it.
pub(crate) fn pypi_program(venv: &str, requirement: &str, program: &str) -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(venv);
    let program = venv.join("bin").join(program);
    // Written last: an environment without it is a half-finished install, made again.
    let done = venv.join(".installed");
    if std::fs::read_to_string(&done).is_ok_and(|installed| installed == requirement)
        && program.exists()
    {
        return program;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let run = |program: &Path, args: &[&str]| {
        let output = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "running {}: {e}; install python3 with venv",
                    program.display()
                )
            });
        assert!(
            output.status.success(),
            "{} {args:?} failed ({requirement} comes from PyPI):\n{}",
            program.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let venv_text = venv.to_str().expect("UTF-8 path");
    run(Path::new("python3"), &["-m", "venv", venv_text]);
    run(&venv.join("bin/pip"), &["install", "--quiet", requirement]);
    std::fs::write(&done, requirement).expect("mark the install done");
    program
}
