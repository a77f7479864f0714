//! A module whose compile passes the host's limits is really stopped: `veil serve` checks an
//! upload in a child process (`veil __wasm-check`) that it kills at the time limit, remembers
//! the refusal by the module's hash, and refuses the same bytes again at once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use veil_sdk::client::{Client, ClientError};

use crate::serve::add_principals;
use crate::support::{Fixture, OPERATOR, server_url, veil_bin};

/// The check's time limit in these tests (the environment variable only the check reads).
const LIMIT_MS: &str = "5000";
/// What a module that passes the limits is told, with [`LIMIT_MS`].
const LIMITS_TEXT: &str =
    "the module could not be compiled within the host's limits (5 s, 1024 MiB); make it smaller";

/// A valid module that takes cranelift minutes: one function with `locals` locals and
/// `diamonds` `if` blocks in a row, each setting one local, then a sum of every local. Each
/// local's value at the end must be looked up through every `if` (locals × diamonds steps).
/// With 1,000 × 20,000 (233 KB) the check's child here was still compiling when its CPU
/// limit of 100 s ended it, using 370 MiB.
fn compile_bomb(locals: u32, diamonds: u32) -> Vec<u8> {
    fn uleb(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn sleb(mut n: i64, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            let done = (n == 0 && byte & 0x40 == 0) || (n == -1 && byte & 0x40 != 0);
            out.push(if done { byte } else { byte | 0x80 });
            if done {
                return;
            }
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        uleb(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    const I32: u8 = 0x7f;
    let mut body = Vec::new();
    // One group of `locals` i32 locals after the parameter (local 0).
    uleb(1, &mut body);
    uleb(u64::from(locals), &mut body);
    body.push(I32);
    for k in 0..diamonds {
        body.extend_from_slice(&[0x20, 0x00, 0x04, 0x40]); // local.get 0; if (no result)
        body.push(0x41); // i32.const k
        sleb(i64::from(k), &mut body);
        body.push(0x21); // local.set 1 + k % locals
        uleb(u64::from(1 + k % locals), &mut body);
        body.push(0x0b); // end
    }
    body.extend_from_slice(&[0x41, 0x00]); // i32.const 0
    for local in 1..=locals {
        body.push(0x20); // local.get
        uleb(u64::from(local), &mut body);
        body.push(0x6a); // i32.add
    }
    body.push(0x0b);

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[0x01, 0x60, 0x01, I32, 0x01, I32], &mut module); // (i32) -> i32
    section(3, &[0x01, 0x00], &mut module); // one function of type 0
    let mut code = Vec::new();
    uleb(1, &mut code);
    uleb(body.len() as u64, &mut code);
    code.extend_from_slice(&body);
    section(10, &code, &mut module);
    module
}

/// `veil serve` on a free loopback port with the check's limit lowered, stopped when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(veil_bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--data-dir",
            ])
            .arg(data_dir)
            .env("VEIL_COMPILE_MS_MAX", LIMIT_MS)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("veil serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("veil serve prints its address");
        let url = server_url(&line);
        Self { child, url }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (state first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Processes (zombies included) whose parent is `parent` and that run a module check.
fn check_children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) != Some(parent) {
            continue;
        }
        // A zombie's command line is empty: its name in `stat` is then the executable's.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let zombie = fields.first().is_some_and(|state| state == "Z");
        if zombie || String::from_utf8_lossy(&cmdline).contains("__wasm-check") {
            found.push(pid);
        }
    }
    found
}

/// CPU time the process's own threads used (not its reaped children's), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let fields = stat_fields(pid).expect("the server runs");
    // utime and stime: fields 14 and 15 of stat(5), 11 and 12 after the name.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Names of the process's threads that compile WASM in-process.
fn compile_threads(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if name.trim().starts_with("veil-wasm-compi") {
                names.push(name.trim().to_string());
            }
        }
    }
    names
}

fn refusal_text(result: &Result<veil_sdk::api::ModuleStored, ClientError>) -> String {
    let Err(error) = result else {
        panic!("the module must be refused: {result:?}");
    };
    let violations = error.violations();
    assert_eq!(violations.len(), 1, "{error:?}");
    assert_eq!(violations[0].rule, "wasm.module", "{error:?}");
    violations[0].message.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compile_bomb_is_killed_at_the_limit_remembered_and_refused_again_at_once() {
    let mut fixture = Fixture::new(1_000);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path());
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let bomb = compile_bomb(1_000, 20_000);

    // The upload is refused at the limit. Meanwhile a check process of the server's did the
    // compiling, not the server: it used almost no CPU time of its own.
    let pid = server.pid();
    let watcher = std::thread::spawn(move || {
        let mut seen = false;
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until && !seen {
            seen = !check_children(pid).is_empty();
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    });
    let ticks_before = cpu_ticks(pid);
    let started = Instant::now();
    let refused = operator.upload_module(bomb.clone()).await;
    let first = started.elapsed();
    assert_eq!(refusal_text(&refused), LIMITS_TEXT);
    assert!(
        first >= Duration::from_millis(4_900) && first < Duration::from_secs(30),
        "stopped at the 5 s limit, after {first:?}"
    );
    assert!(
        watcher.join().expect("watcher"),
        "the compile ran in a `veil __wasm-check` child"
    );
    let server_ticks = cpu_ticks(pid) - ticks_before;
    assert!(
        server_ticks < 150,
        "the server itself used {server_ticks} ticks of CPU while its child compiled for 5 s"
    );

    // Nothing goes on compiling: no check process (not even a zombie), no compile thread,
    // and the server's CPU time stands still.
    assert_eq!(check_children(pid), Vec::<u32>::new());
    assert_eq!(compile_threads(pid), Vec::<String>::new());
    let idle_before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(1_500));
    let idle = cpu_ticks(pid) - idle_before;
    assert!(
        idle < 30,
        "the server used {idle} ticks of CPU in 1.5 s after the refusal"
    );

    // The same bytes are refused again at once, with the same text, without a compile.
    let started = Instant::now();
    let again = operator.upload_module(bomb.clone()).await;
    let second = started.elapsed();
    assert_eq!(refusal_text(&again), LIMITS_TEXT);
    assert!(
        second < Duration::from_secs(1),
        "refused again in {second:?}"
    );
    assert_eq!(check_children(pid), Vec::<u32>::new());

    // The refusal is kept in the store, so another process refuses the bytes at once too:
    // `veil template submit` (whose own limit is the full 30 s) names it from a template file.
    let dir = fixture.dir.path().join("bomb");
    std::fs::create_dir_all(&dir).expect("folder");
    std::fs::write(dir.join("bomb.wasm"), &bomb).expect("module file");
    let template = include_str!("../../examples/templates/pension_eligibility.toml")
        .replace("pension_eligibility.wasm", "bomb.wasm");
    assert!(template.contains("module = \"bomb.wasm\""), "{template}");
    std::fs::write(dir.join("bomb.toml"), template).expect("template file");
    let started = Instant::now();
    let submitted = Command::new(veil_bin())
        .args(["template", "submit", "--operator", OPERATOR, "--file"])
        .arg(dir.join("bomb.toml"))
        .arg("--data-dir")
        .arg(fixture.store_path())
        .output()
        .expect("veil runs");
    let cli = started.elapsed();
    // Every refusal of a submission is listed on standard output with its rules.
    let stdout = String::from_utf8_lossy(&submitted.stdout);
    assert_eq!(submitted.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains(LIMITS_TEXT), "{stdout}");
    assert!(cli < Duration::from_secs(3), "refused in {cli:?}");

    // A good module still uploads (and is checked within the lowered limit).
    let good = std::fs::read(Path::new(veil_testkit::GUESTS_DIR).join("pension_eligibility.wasm"))
        .expect("guest built");
    let stored = operator.upload_module(good.clone()).await.expect("stored");
    assert_eq!(stored.blake3, blake3::hash(&good).to_hex().as_str());
    assert_eq!(check_children(pid), Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_module_is_remembered_with_its_reason_and_a_fixed_one_is_not_affected() {
    let mut fixture = Fixture::new(1_000);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path());
    let operator = Client::new(&server.url, &keys.operator).expect("client");

    // Imports WASI: refused by the child's ABI check, and remembered with that reason.
    let wasi = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))"#,
    )
    .expect("wat");
    let first = refusal_text(&operator.upload_module(wasi.clone()).await);
    assert!(
        first.contains("imports `wasi_snapshot_preview1.fd_write`"),
        "{first}"
    );
    assert_eq!(
        refusal_text(&operator.upload_module(wasi.clone()).await),
        first
    );
    let digest = blake3::hash(&wasi).to_hex().to_string();
    let kept: String = fixture
        .store
        .conn()
        .query_row(
            "SELECT reason FROM module_refusals WHERE blake3 = ?1",
            [&digest],
            |row| row.get(0),
        )
        .expect("the refusal is kept by hash");
    assert_eq!(kept, first);

    // Other bytes are checked on their own.
    let good = std::fs::read(Path::new(veil_testkit::GUESTS_DIR).join("pension_eligibility.wasm"))
        .expect("guest built");
    operator.upload_module(good).await.expect("stored");
    assert_eq!(check_children(server.pid()), Vec::<u32>::new());
}
