//! Benchmark: the DP aggregate job on a table in object storage, run by one process (the
//! default) and on a cluster of 1 and 2 Veil executors, on this machine.
//!
//! ```text
//! cargo run --release -p veil-examples --example bench_cluster -- [ROWS] [RUNS]
//! ```
//!
//! ROWS defaults to 10,000,000 social-insurance records (generated once into
//! `target/bench-data/ROWS/`), RUNS to 3 (plus one warm-up run per set-up, not counted). The
//! file is uploaded to an S3-compatible server on 127.0.0.1 (moto in server mode, installed
//! once into `target/moto-venv` from PyPI) and registered from there; every run reads it from
//! the bucket. Each set-up runs in a process of its own (`measure`), with its executors
//! (`executor`, this same program) started for it and stopped after it, so the peak memory of
//! every process is its own: the measuring process, the job's process (the coordinator on a
//! cluster) and each executor. The job is bench_dp_aggregate's ("per city and gender:
//! distinct persons and average clamped income").

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::object_store::ObjectStoreExt;
use datafusion::object_store::aws::AmazonS3Builder;
use datafusion::object_store::path::Path as ObjectPath;
use veil_runtime::catalog::{self, Policy};
use veil_runtime::jobs::{self, JobOutcome, JobRequest};
use veil_runtime::store::Store;
use veil_testkit::demo_data;

const POLICY: &str = include_str!("policies/social_insurance.toml");
const OPERATOR: &str = veil_examples::BENCH_OPERATOR;
const SQL: &str = "SELECT city, gender, COUNT(DISTINCT person_id) AS persons, AVG(monthly_income) AS avg_income \
     FROM social_insurance WHERE year >= :since GROUP BY city, gender";
const BUCKET: &str = "bench";
const KEY: &str = "social_insurance.parquet";
const ACCESS_KEY_ID: &str = "bench";
const SECRET_ACCESS_KEY: &str = "bench-secret";

type BoxError = Box<dyn std::error::Error>;

fn repo_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// The peak resident set of process `pid` (`self` for this one), from /proc, in bytes.
fn peak_rss_bytes(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The bytes process `pid` has passed to `write`-family system calls (`wchar` in /proc): for an
/// executor, the fold states it sends (gRPC frames) and its small requests to the bucket. (Its
/// reads from the bucket arrive through `recv`, which /proc does not count.)
fn written_bytes(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar:")?.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Watches this process's children (the jobs' processes) every 20 ms until dropped and keeps
/// the largest peak resident set any of them reached, in bytes.
struct ChildWatch {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ChildWatch {
    fn start() -> Self {
        use std::sync::atomic::Ordering;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let me = std::process::id().to_string();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let pid = entry.file_name().to_string_lossy().to_string();
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
                    // The parent's pid is the second field after the command's closing paren.
                    let parent = stat.ok().and_then(|stat| {
                        let rest = stat.rsplit_once(')')?.1.to_string();
                        rest.split_whitespace().nth(1).map(String::from)
                    });
                    if parent.as_deref() == Some(me.as_str()) {
                        p.fetch_max(peak_rss_bytes(&pid), Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for ChildWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// moto's server program, installed into `target/moto-venv` on first use (the version, and the
/// marker file, the tests use).
fn moto_program() -> Result<PathBuf, BoxError> {
    const MOTO: &str = "moto[server]==5.2.5";
    let venv = repo_target().join("moto-venv");
    let program = venv.join("bin/moto_server");
    let done = venv.join(".installed");
    if std::fs::read_to_string(&done).is_ok_and(|installed| installed == MOTO) && program.exists() {
        return Ok(program);
    }
    eprintln!("installing {MOTO} into {} (once)…", venv.display());
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?;
    if !made.success() {
        return Err("python3 -m venv failed: install python3 with venv".into());
    }
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", MOTO])
        .status()?;
    if !installed.success() {
        return Err(format!("pip install {MOTO} failed (it comes from PyPI)").into());
    }
    std::fs::write(&done, MOTO)?;
    Ok(program)
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts moto on a free port; returns it and its endpoint.
fn start_moto() -> Result<(Running, String), BoxError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(moto_program()?)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let running = Running(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("moto_server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((running, format!("http://127.0.0.1:{port}")))
}

/// Creates the bucket (an unsigned `PUT /bucket`, which moto takes) and uploads `file`.
async fn upload(endpoint: &str, file: &Path) -> Result<(), BoxError> {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address)?;
    write!(
        stream,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("creating the bucket: {answer}").into());
    }
    let client = AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_access_key_id(ACCESS_KEY_ID)
        .with_secret_access_key(SECRET_ACCESS_KEY)
        .with_allow_http(true)
        .build()?;
    let bytes = std::fs::read(file)?;
    client.put(&ObjectPath::from(KEY), bytes.into()).await?;
    Ok(())
}

/// A store in `dir` with the bucket's table registered, granted and a template approved.
fn set_up(dir: &Path, endpoint: &str) -> Result<String, BoxError> {
    std::fs::write(
        dir.join("object-storage.toml"),
        format!(
            "[[bucket]]\nname = \"{BUCKET}\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\naccess_key_id = \"{ACCESS_KEY_ID}\"\nsecret_access_key = \"{SECRET_ACCESS_KEY}\"\nallow_http = true\n"
        ),
    )?;
    let mut store = Store::init(dir)?;
    catalog::register(
        &mut store,
        "social_insurance",
        Path::new(&format!("s3://{BUCKET}/{KEY}")),
        Policy::parse(POLICY)?,
    )?;
    // The largest limit a template can have: the gate bounds the job's per-person state by
    // its worst case (every row a person of its own) before any ε, and at this limit that
    // admits up to about 42M rows of this job (BENCHMARKS.md).
    let template = veil_examples::grant_and_approve(&mut store, "cluster benchmark", SQL, 8192)?;
    veil_runtime::cluster::token(dir, true)?;
    Ok(template)
}

/// `measure STORE TEMPLATE FIRST_SINCE RUNS [EXECUTORS]`: runs the job RUNS + 1 times in this
/// process (on the executors, if named); prints one line of figures.
async fn measure(args: &[String]) -> Result<(), BoxError> {
    let [store, template, first, runs, rest @ ..] = args else {
        return Err("measure STORE TEMPLATE FIRST_SINCE RUNS [EXECUTORS]".into());
    };
    let store_dir = Path::new(store);
    if let Some(executors) = rest.first() {
        veil_runtime::cluster::use_cluster(
            store_dir,
            executors.split(',').map(String::from).collect(),
            veil_runtime::cluster::BYTES_PER_PARTITION_DEFAULT,
        )?;
    }
    let mut store = Store::open(store_dir)?;
    let first: i64 = first.parse()?;
    let runs: i64 = runs.parse()?;
    let mut seconds = Vec::new();
    let watch = ChildWatch::start();
    // Each run uses another `since` (all rows match), so no run is an identical rerun.
    for run in 0..=runs {
        let started = Instant::now();
        let outcome = jobs::run(
            &mut store,
            JobRequest {
                operator: OPERATOR.into(),
                template: template.clone(),
                params: vec![("since".into(), (first - run).to_string())],
                grant: None,
            },
        )
        .await?;
        let elapsed = started.elapsed().as_secs_f64();
        match outcome {
            JobOutcome::Released {
                rows: Some(batch), ..
            } if batch.num_rows() == 22 => {}
            other => {
                // The bureau's record says why (a category, never a value).
                let (_, entries) = veil_runtime::audit::recent(store.conn(), 3)?;
                let why = entries
                    .iter()
                    .find(|e| e.kind == "job.failed")
                    .map(|e| e.details.clone())
                    .unwrap_or_default();
                return Err(format!("the job did not release 22 rows: {other:?}; {why}").into());
            }
        }
        eprintln!("  run {run}: {elapsed:.3} s");
        if run > 0 {
            seconds.push(elapsed);
        }
    }
    println!(
        "{:.3} {} {}",
        median(&mut seconds),
        watch.peak(),
        peak_rss_bytes("self")
    );
    Ok(())
}

/// `executor STORE`: one of Veil's executors on a free loopback port (printed).
async fn executor(args: &[String]) -> Result<(), BoxError> {
    let [store] = args else {
        return Err("executor STORE".into());
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    veil_runtime::cluster::serve_executor(
        listener,
        Path::new(store),
        veil_runtime::cluster::EXECUTOR_MEMORY_BYTES_DEFAULT * 4,
        std::future::pending(),
    )
    .await?;
    Ok(())
}

/// One set-up's figures.
struct Figures {
    label: String,
    seconds: f64,
    job_peak: u64,
    measuring_peak: u64,
    executor_peaks: Vec<u64>,
    /// Bytes all executors wrote per run (see [`written_bytes`]).
    executor_written: u64,
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
}

async fn orchestrate(args: &[String]) -> Result<(), BoxError> {
    let rows: u64 = args.first().map_or(Ok(10_000_000), |a| a.parse())?;
    let runs: usize = args.get(1).map_or(Ok(3), |a| a.parse())?;
    let data = repo_target().join("bench-data").join(rows.to_string());
    let file = data.join("social_insurance.parquet");
    if !file.exists() {
        eprintln!(
            "generating {rows} rows of demo data in {} (once)…",
            data.display()
        );
        demo_data::write_demo_data(rows, &data, demo_data::DEMO_SEED)?;
    }
    let (_moto, endpoint) = start_moto()?;
    eprintln!("uploading {} to {endpoint}…", file.display());
    upload(&endpoint, &file).await?;
    let dir = tempfile::tempdir()?;
    let template = set_up(dir.path(), &endpoint)?;
    let exe = std::env::current_exe()?;
    let store = dir.path().to_str().ok_or("path is not UTF-8")?.to_string();
    let load_before = load_average();
    let mut figures = Vec::new();
    for (index, executors) in [0usize, 1, 2].into_iter().enumerate() {
        let mut started = Vec::new();
        let mut addresses = Vec::new();
        for _ in 0..executors {
            let mut child = Command::new(&exe)
                .args(["executor", &store])
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
            addresses.push(line.trim().to_string());
            started.push(Running(child));
        }
        let label = match executors {
            0 => "one process".to_string(),
            n => format!("cluster, {n} executor(s)"),
        };
        eprintln!("{label}:");
        let first = (1990 - index * 100).to_string();
        let mut command = Command::new(&exe);
        command.args(["measure", &store, &template, &first, &runs.to_string()]);
        if !addresses.is_empty() {
            command.arg(addresses.join(","));
        }
        let output = command.stderr(Stdio::inherit()).output()?;
        if !output.status.success() {
            return Err(format!("{label}: the measuring process failed").into());
        }
        let text = String::from_utf8(output.stdout)?;
        let values: Vec<&str> = text.split_whitespace().collect();
        let [seconds, job_peak, measuring_peak] = values[..] else {
            return Err(format!("{label}: unexpected figures {text:?}").into());
        };
        let executor_peaks = started
            .iter()
            .map(|running| peak_rss_bytes(&running.0.id().to_string()))
            .collect();
        // Every run, the warm-up included, went through the executors.
        let per_run = runs as u64 + 1;
        let executor_written = started
            .iter()
            .map(|running| written_bytes(&running.0.id().to_string()) / per_run)
            .sum();
        figures.push(Figures {
            label,
            seconds: seconds.parse()?,
            job_peak: job_peak.parse()?,
            measuring_peak: measuring_peak.parse()?,
            executor_peaks,
            executor_written,
        });
        drop(started);
    }
    let local = figures[0].seconds;
    println!("\n{rows} rows from object storage (moto on 127.0.0.1), median of {runs} runs");
    println!(
        "load average before: {load_before}; after: {}",
        load_average()
    );
    println!(
        "| set-up | median s | vs one process | job process peak MiB | executors' peak MiB | measuring process peak MiB | executors wrote per run MiB |"
    );
    println!("|---|---|---|---|---|---|---|");
    for f in &figures {
        let executors = if f.executor_peaks.is_empty() {
            "—".to_string()
        } else {
            f.executor_peaks
                .iter()
                .map(|b| mib(*b))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let io = if f.executor_peaks.is_empty() {
            "—".to_string()
        } else {
            format!("{:.1}", f.executor_written as f64 / 1048576.0)
        };
        println!(
            "| {} | {:.3} | {:.2}× | {} | {} | {} | {} |",
            f.label,
            f.seconds,
            f.seconds / local,
            mib(f.job_peak),
            executors,
            mib(f.measuring_peak),
            io
        );
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    // Jobs run in a child process of this very program (see `veil_gate::job`), which makes
    // its own runtime: answer as that child before starting one here.
    veil_gate::job::serve_child_if_asked();
    veil_gate::job::use_executable(std::env::current_exe()?);
    let args: Vec<String> = std::env::args().skip(1).collect();
    tokio::runtime::Runtime::new()?.block_on(async {
        match args.first().map(String::as_str) {
            Some("measure") => measure(&args[1..]).await,
            Some("executor") => executor(&args[1..]).await,
            _ => orchestrate(&args).await,
        }
    })
}
