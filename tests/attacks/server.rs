//! `veil serve` on a free loopback port, with everything it prints kept for the canary scan,
//! and the raw HTTP calls the attacks make.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::{server_url, veil_bin};

/// A `veil serve` process, killed when dropped; its stdout and stderr are collected.
pub(crate) struct Server {
    child: Child,
    pub url: String,
    log: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    pub(crate) fn start(data_dir: &Path, workers: usize) -> Self {
        let mut child = Command::new(veil_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--workers"])
            .arg(workers.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("veil serve starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("veil serve prints its address");
        log.lock().expect("log").extend(line.as_bytes());
        let url = server_url(&line);
        let stderr = child.stderr.take().expect("stderr");
        let readers = vec![collect(stdout, log.clone()), collect(stderr, log.clone())];
        Self {
            child,
            url,
            log,
            readers,
        }
    }

    /// The server's process id (its job children have it as their parent).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the server printed so far (for a failure message).
    pub(crate) fn output_tail(&self) -> String {
        let log = self.log.lock().expect("log");
        let text = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Kills the server process alone with SIGKILL (its job children are left to it) and waits
    /// for it.
    pub(crate) fn kill_server_only(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server and returns everything it printed on stdout and stderr.
    pub(crate) fn stop(mut self) -> Vec<u8> {
        kill_job_children(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        std::mem::take(&mut *self.log.lock().expect("log"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A job child outlives a killed server (see `kill`): end ours first, by process id.
        kill_job_children(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().expect("log").extend(&buffer[..n]),
            }
        }
    })
}

/// An HTTP answer: status and body text.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    pub(crate) fn ok(self, what: &str) -> Self {
        assert!(
            (200..300).contains(&self.status),
            "{what}: HTTP {} {}",
            self.status,
            self.body
        );
        self
    }
}

/// Raw JSON calls on `/v1` with one API key.
#[derive(Clone)]
pub(crate) struct Http {
    base: String,
    key: String,
    client: reqwest::Client,
}

impl Http {
    pub(crate) fn new(server: &Server, key: &str) -> Self {
        Self {
            base: format!("{}/v1", server.url),
            key: key.to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("HTTP client"),
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        answer(response).await
    }

    pub(crate) async fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("a body").to_vec();
        (status, body)
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Answer {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        answer(response).await
    }

    /// Waits until job `id` has ended (or `timeout` passes); returns its last view.
    pub(crate) async fn wait_job(&self, id: &str, timeout: Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let job = self
                .get(&format!("/jobs/{id}/wait?timeout_ms=1000"))
                .await
                .ok("waiting for a job")
                .json();
            let state = job["state"].as_str().unwrap_or_default().to_string();
            if !matches!(state.as_str(), "queued" | "running")
                || std::time::Instant::now() > deadline
            {
                return job;
            }
        }
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Answer { status, body }
}

/// Submits `sql` (parameters declared from `params`: integer if the value parses as one, else
/// text) as the operator under template name `name`; returns the template id, or the answer
/// if the server refused the template.
pub(crate) async fn submit_template(
    operator: &Http,
    name: &str,
    sql: &str,
    params: &[(String, String)],
) -> Result<String, Answer> {
    let declared: Vec<Value> = params
        .iter()
        .map(|(name, value)| {
            let kind = if value.parse::<i64>().is_ok() {
                "integer"
            } else {
                "text"
            };
            serde_json::json!({ "name": name, "type": kind })
        })
        .collect();
    let answer = operator
        .post(
            "/templates",
            &serde_json::json!({ "spec": { "name": name, "sql": sql, "params": declared } }),
        )
        .await;
    if answer.status != 201 && answer.status != 200 {
        return Err(answer);
    }
    Ok(answer.json()["id"]
        .as_str()
        .expect("a template id")
        .to_string())
}

/// The `veil __job-exec` children of process `parent` that run a job, by scanning
/// `/proc/*/cmdline` (a child started ahead of time and still waiting for its request has not
/// taken the name `veil_gate::job::CHILD_RUNNING_NAME` yet, and is left out).
pub(crate) fn job_children(parent: u32) -> Vec<u32> {
    exec_children(parent, true)
}

/// The `veil __job-exec` children of process `parent`: those running a job only, or all.
fn exec_children(parent: u32, running_only: bool) -> Vec<u32> {
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
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let is_child_command = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == veil_gate::job::CHILD_COMMAND.as_bytes());
        let running = std::fs::read_to_string(entry.path().join("comm"))
            .is_ok_and(|comm| comm.trim_end() == veil_gate::job::CHILD_RUNNING_NAME);
        if is_child_command && (running || !running_only) && parent_of(pid) == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// The parent process id of `pid`, from `/proc/PID/stat` (the field after the command name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// True while process `pid` exists and is not a zombie.
pub(crate) fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Kills (SIGKILL) the job children of process `parent`, waiting ones too.
pub(crate) fn kill_job_children(parent: u32) {
    for pid in exec_children(parent, false) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}
