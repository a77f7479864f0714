//! Checking an operator's WASM module before it is stored, in a child process the server can
//! kill.
//!
//! Cranelift may take minutes and gigabytes on a hostile module (one huge function with
//! hundreds of thousands of blocks), and a compile cannot be stopped from inside the process
//! that runs it. So a module upload (`templates::store_module`) and a template's module check
//! (`templates::check_module`) never compile in the server: they run the checks of
//! `WasmEngine::compile` (size, validation, compilation, the host ABI, the initial memory and
//! table sizes) in a child process of the `veil` binary, `veil __wasm-check MEM CPU`:
//!
//! ```text
//! parent: refused before? (module_refusals, by BLAKE3) ─► wait for one of CHECKS_AT_ONCE_MAX
//!   spawn `veil __wasm-check MEM CPU` (rlimits set first: data segment, CPU time, no core)
//!   stdin:  the module's bytes
//!   child:  WasmEngine::check (compile on its main thread, dropped after)
//!   stdout: JSON CheckReply — accepted, or the refusal's text
//! parent: at the time limit, SIGKILL and reap; a child that dies or is killed is a refusal;
//!         a refusal of the bytes is remembered in module_refusals
//! ```
//!
//! **Invariants.** No thread of the server compiles bytes this check has not accepted (jobs
//! compile in their own child processes, which are killed at their limits). No check child
//! outlives its check: it is killed and reaped before [`check`] returns, whatever the outcome.
//! Only refusals that are properties of the bytes are remembered (invalid, an import, the
//! ABI, a start size, the time or memory limit) — never "busy" or a failure of the host.
//!
//! Any binary that checks modules must answer as the child: `veil`'s `main` calls
//! [`serve_check_if_asked`] first thing. A process whose own executable does not (a test
//! harness) points `exec::use_executable` at `veil`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use veil_gate::sandbox::wasm::{
    COMPILE_MS_MAX, MODULE_BYTES_MAX, WasmEngine, WasmLimits, WasmRefusal,
};

use crate::clock;
use crate::error::{Error, Result};
use crate::store::Store;
use veil_gate::job as exec;
use veil_gate::rules::{Refusal, Rule};

/// The hidden subcommand a binary answers as a module check's child process.
pub const CHECK_COMMAND: &str = "__wasm-check";

/// The environment variable that may lower the check's time limit below [`COMPILE_MS_MAX`],
/// in milliseconds, so tests of the limit take seconds. Read only here; a value above the
/// limit, zero or not a number is ignored.
pub const COMPILE_MS_MAX_VAR: &str = "VEIL_COMPILE_MS_MAX";

/// Memory (data segment: every heap allocation) a check's child may use, in bytes. The
/// example mappers compile within a few dozen MiB; an 8 MiB module of ordinary functions
/// within a few hundred.
pub const CHECK_MEMORY_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// CPU time a check's child may use beyond the time limit, in seconds: the operating system's
/// backstop should the parent not kill it at the time limit.
pub const CHECK_CPU_EXTRA_SECONDS: u64 = 2;

/// Checks that may run at once in one process: each may take a core for the whole time limit,
/// and the machine's cores are for jobs.
pub const CHECKS_AT_ONCE_MAX: usize = 2;

/// How long a check waits for one of [`CHECKS_AT_ONCE_MAX`] places before its caller is told
/// to try again, in milliseconds.
pub const CHECK_WAIT_MS_MAX: u64 = 10_000;

/// Largest reply a check's child may write, in bytes (a refusal's text).
const REPLY_BYTES_MAX: u64 = 64 * 1024;

/// How often the parent looks whether its child has ended, in milliseconds.
const CHILD_POLL_MS: u64 = 5;

/// What a check's child answers.
#[derive(Debug, Serialize, Deserialize)]
enum CheckReply {
    /// The module passed every check.
    Accepted,
    /// The module was refused; the text names the module's own parts, never data.
    Refused(String),
    /// The child could not check (its WASM engine did not start): nothing about the bytes.
    HostFailed(String),
}

/// How a check ended, in the parent.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Accepted,
    /// A property of the bytes: remembered, and refused again at once.
    Refused(String),
}

/// Checks a module as `WasmEngine::compile` would, in a child process with OS limits, and
/// remembers a refusal by the module's BLAKE3 hash so that the same bytes are refused again
/// at once, with the same text.
///
/// Errors: [`Error::Refused`] (rule `wasm.module`) when the module is refused;
/// [`Error::Resources`] when [`CHECKS_AT_ONCE_MAX`] checks are already running and none
/// ended within [`CHECK_WAIT_MS_MAX`] (HTTP 503: try again); [`Error::Internal`] when the
/// child could not be started or did not answer as a check.
pub fn check(store: &Store, bytes: &[u8]) -> Result<()> {
    if bytes.len() > MODULE_BYTES_MAX {
        return Err(refused(
            WasmRefusal::TooLarge {
                bytes: bytes.len(),
                max: MODULE_BYTES_MAX,
            }
            .to_string(),
        ));
    }
    let digest = blake3::hash(bytes).to_hex().to_string();
    if let Some(reason) = remembered(store, &digest)? {
        return Err(refused(reason));
    }
    let _place = Places::global()
        .enter(Duration::from_millis(CHECK_WAIT_MS_MAX))
        .ok_or_else(|| {
            Error::Resources(format!(
                "the server is already checking {CHECKS_AT_ONCE_MAX} WASM modules; try again in a minute"
            ))
        })?;
    // Another caller may have refused the same bytes while this one waited.
    if let Some(reason) = remembered(store, &digest)? {
        return Err(refused(reason));
    }
    let exe = exec::executable()
        .map_err(|e| Error::internal(format!("finding this program to check a module ({e})")))?;
    match run_child(&exe, bytes, compile_ms_max())? {
        Outcome::Accepted => Ok(()),
        Outcome::Refused(reason) => {
            remember(store, &digest, &reason);
            Err(refused(reason))
        }
    }
}

fn refused(reason: String) -> Error {
    Error::Refused(Refusal::one(Rule::WasmModule, reason))
}

/// The refusal remembered for the module with this BLAKE3 hash (hex), if any.
fn remembered(store: &Store, digest: &str) -> Result<Option<String>> {
    Ok(store
        .conn()
        .query_row(
            "SELECT reason FROM module_refusals WHERE blake3 = ?1",
            [digest],
            |row| row.get(0),
        )
        .optional()?)
}

/// Remembers a refusal. The table is a memo of a check of the bytes — deleting a row changes
/// nothing but the time the next upload of those bytes takes — so it is written outside
/// `Store::write` and carries no audit entry. Failing to write it (a full disk, a busy
/// database) costs only that time: the refusal stands either way.
fn remember(store: &Store, digest: &str, reason: &str) {
    let _ = store.conn().execute(
        "INSERT OR IGNORE INTO module_refusals (blake3, reason, at) VALUES (?1, ?2, ?3)",
        params![digest, reason, clock::format(clock::now())],
    );
}

/// The check's time limit in milliseconds: [`COMPILE_MS_MAX`], or lower if
/// [`COMPILE_MS_MAX_VAR`] says so.
pub fn compile_ms_max() -> u64 {
    limit_from(std::env::var(COMPILE_MS_MAX_VAR).ok().as_deref())
}

fn limit_from(value: Option<&str>) -> u64 {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| (1..=COMPILE_MS_MAX).contains(ms))
        .unwrap_or(COMPILE_MS_MAX)
}

/// What a module that passed a limit is told.
fn limits_text(limit_ms: u64) -> String {
    let time = if limit_ms.is_multiple_of(1000) {
        format!("{} s", limit_ms / 1000)
    } else {
        format!("{limit_ms} ms")
    };
    format!(
        "the module could not be compiled within the host's limits ({time}, {} MiB); make it smaller",
        CHECK_MEMORY_BYTES_MAX / (1024 * 1024)
    )
}

/// Runs the check's child and ends it: killed and reaped at `limit_ms`, whatever it does.
fn run_child(exe: &Path, bytes: &[u8], limit_ms: u64) -> Result<Outcome> {
    let cpu_seconds = limit_ms.div_ceil(1000) + CHECK_CPU_EXTRA_SECONDS;
    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg(CHECK_COMMAND)
        .arg(CHECK_MEMORY_BYTES_MAX.to_string())
        .arg(cpu_seconds.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::internal(format!("starting a module check's process ({e})")))?;
    let deadline = started + Duration::from_millis(limit_ms);
    let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
    let (Some(mut stdin), Some(stdout)) = (stdin, stdout) else {
        end(&mut child);
        return Err(Error::internal("connecting to a module check's process"));
    };
    // The pipes are serviced on threads of their own so the deadline holds even if the child
    // stopped reading or writing; both end when the child does.
    let owned = bytes.to_vec();
    let writer = std::thread::Builder::new()
        .name("veil-check-input".into())
        .spawn(move || {
            // A child that dies early closes its input; its exit says why.
            let _ = stdin.write_all(&owned);
        });
    let reader = std::thread::Builder::new()
        .name("veil-check-output".into())
        .spawn(move || {
            let mut reply = Vec::new();
            stdout
                .take(REPLY_BYTES_MAX)
                .read_to_end(&mut reply)
                .map(|_| reply)
        });
    let (writer, reader) = match (writer, reader) {
        (Ok(writer), Ok(reader)) => (writer, reader),
        (writer, reader) => {
            // Ending the child ends whichever thread did start: its pipe breaks or closes.
            end(&mut child);
            if let Ok(writer) = writer {
                let _ = writer.join();
            }
            if let Ok(reader) = reader {
                let _ = reader.join();
            }
            return Err(Error::internal("starting the threads of a module check"));
        }
    };
    let status = wait_until(&mut child, deadline);
    let _ = writer.join();
    let reply = reader.join();
    let Some(status) = status else {
        return Ok(Outcome::Refused(limits_text(limit_ms)));
    };
    let status = status
        .map_err(|e| Error::internal(format!("waiting for a module check's process ({e})")))?;
    match reply {
        Ok(Ok(reply)) => outcome(&status, &reply, limit_ms),
        _ => Err(Error::internal("reading a module check's answer")),
    }
}

/// Waits for the child until `deadline`; past it, kills and reaps it and returns `None`.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::io::Result<ExitStatus>> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(Ok(status)),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(CHILD_POLL_MS));
            }
            Ok(None) => {
                end(child);
                return None;
            }
            Err(e) => {
                end(child);
                return Some(Err(e));
            }
        }
    }
}

/// SIGKILL, then reap: no check's process outlives its check, not even as a zombie.
fn end(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// What a child's exit and answer mean.
fn outcome(status: &ExitStatus, reply: &[u8], limit_ms: u64) -> Result<Outcome> {
    use std::os::unix::process::ExitStatusExt;
    if status.signal().is_some() || status.code() == Some(PANIC_EXIT_CODE) {
        // Killed by its CPU limit, aborted on an allocation past its memory limit, or crashed
        // compiling: the bytes took the compiler past what the host gives a module.
        return Ok(Outcome::Refused(limits_text(limit_ms)));
    }
    if !status.success() {
        return Err(Error::internal(format!(
            "checking a module: its process exited with code {}",
            status.code().unwrap_or(-1)
        )));
    }
    match serde_json::from_slice::<CheckReply>(reply) {
        Ok(CheckReply::Accepted) => Ok(Outcome::Accepted),
        Ok(CheckReply::Refused(reason)) => Ok(Outcome::Refused(reason)),
        Ok(CheckReply::HostFailed(what)) => Err(Error::internal(format!(
            "checking a module: the WASM engine did not start ({what})"
        ))),
        Err(_) => Err(Error::internal(
            "checking a module: its process answered something that does not parse",
        )),
    }
}

/// The exit code of a Rust process whose main thread panicked.
const PANIC_EXIT_CODE: i32 = 101;

/// Places for checks running at once in this process (see [`CHECKS_AT_ONCE_MAX`]).
struct Places {
    taken: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

/// One place, given back when dropped.
struct Place<'a>(&'a Places);

impl Places {
    fn new(max: usize) -> Self {
        Self {
            taken: Mutex::new(0),
            freed: Condvar::new(),
            max,
        }
    }

    fn global() -> &'static Places {
        static PLACES: OnceLock<Places> = OnceLock::new();
        PLACES.get_or_init(|| Places::new(CHECKS_AT_ONCE_MAX))
    }

    /// Takes a place, waiting at most `wait` for one; `None` if none was free by then.
    fn enter(&self, wait: Duration) -> Option<Place<'_>> {
        let deadline = Instant::now() + wait;
        // The count is only ever changed by one statement, so a poisoned lock still holds a
        // correct count.
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        while *taken >= self.max {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            taken = self
                .freed
                .wait_timeout(taken, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *taken += 1;
        Some(Place(self))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut taken = self.0.taken.lock().unwrap_or_else(|e| e.into_inner());
        *taken = taken.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

/// Answers as a module check's child process when the command line asks for it (`<exe>
/// __wasm-check MEM CPU`): checks the module on stdin and exits. Returns when the process is
/// not a check's child, so a binary's `main` can call it first thing and go on.
pub fn serve_check_if_asked() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some(CHECK_COMMAND) {
        return;
    }
    let memory: Option<u64> = args.next().and_then(|a| a.parse().ok());
    let cpu: Option<u64> = args.next().and_then(|a| a.parse().ok());
    std::process::exit(check_main(memory, cpu));
}

/// The child's whole life: limits, the module, the check, the answer.
fn check_main(memory_bytes: Option<u64>, cpu_seconds: Option<u64>) -> i32 {
    // The parent reads only the answer; a panic's message would go nowhere useful.
    std::panic::set_hook(Box::new(|_| {}));
    if exec::set_limits(memory_bytes, cpu_seconds).is_err() {
        return 3;
    }
    let mut bytes = Vec::new();
    if std::io::stdin()
        .take(MODULE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .is_err()
    {
        return 4;
    }
    let reply = match WasmEngine::global() {
        Ok(engine) => match engine.check(&bytes, &WasmLimits::default()) {
            Ok(()) => CheckReply::Accepted,
            Err(refusal) => CheckReply::Refused(refusal.to_string()),
        },
        Err(e) => CheckReply::HostFailed(e.to_string()),
    };
    let Ok(json) = serde_json::to_vec(&reply) else {
        return 6;
    };
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(&json)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return 7;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_may_only_be_lowered() {
        assert_eq!(limit_from(None), COMPILE_MS_MAX);
        assert_eq!(limit_from(Some("1500")), 1500);
        assert_eq!(limit_from(Some("0")), COMPILE_MS_MAX);
        assert_eq!(limit_from(Some("soon")), COMPILE_MS_MAX);
        assert_eq!(
            limit_from(Some(&(COMPILE_MS_MAX + 1).to_string())),
            COMPILE_MS_MAX
        );
    }

    #[test]
    fn the_limits_text_names_time_and_memory() {
        assert_eq!(
            limits_text(30_000),
            "the module could not be compiled within the host's limits (30 s, 1024 MiB); make it smaller"
        );
        assert!(limits_text(1_500).contains("(1500 ms, 1024 MiB)"));
    }

    #[test]
    fn places_are_bounded_and_a_caller_past_the_bound_gives_up_in_time() {
        let places = Places::new(2);
        let first = places.enter(Duration::ZERO).expect("a place");
        let _second = places.enter(Duration::ZERO).expect("a place");
        let started = Instant::now();
        assert!(places.enter(Duration::from_millis(50)).is_none());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        drop(first);
        assert!(places.enter(Duration::ZERO).is_some());
    }

    #[test]
    fn a_waiting_caller_gets_the_place_given_back() {
        let places = std::sync::Arc::new(Places::new(1));
        let held = places.enter(Duration::ZERO).expect("a place");
        let waiter = {
            let places = std::sync::Arc::clone(&places);
            std::thread::spawn(move || places.enter(Duration::from_secs(10)).is_some())
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        assert!(waiter.join().expect("waiter"));
    }

    #[test]
    fn a_crash_or_a_kill_is_a_refusal_of_the_bytes_and_a_bad_exit_is_not() {
        use std::os::unix::process::ExitStatusExt;
        let killed = ExitStatus::from_raw(9);
        assert_eq!(
            outcome(&killed, b"", 2_000).expect("an outcome"),
            Outcome::Refused(limits_text(2_000))
        );
        let panicked = ExitStatus::from_raw(PANIC_EXIT_CODE << 8);
        assert!(matches!(
            outcome(&panicked, b"", 2_000),
            Ok(Outcome::Refused(_))
        ));
        let no_input = ExitStatus::from_raw(4 << 8);
        assert!(matches!(
            outcome(&no_input, b"", 2_000),
            Err(Error::Internal(_))
        ));
        let ok = ExitStatus::from_raw(0);
        let host = serde_json::to_vec(&CheckReply::HostFailed("no".into())).expect("json");
        assert!(matches!(
            outcome(&ok, &host, 2_000),
            Err(Error::Internal(_))
        ));
        let accepted = serde_json::to_vec(&CheckReply::Accepted).expect("json");
        assert_eq!(
            outcome(&ok, &accepted, 2_000).expect("an outcome"),
            Outcome::Accepted
        );
    }
}
