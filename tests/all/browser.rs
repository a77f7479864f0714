//! A small W3C WebDriver client for the end-to-end tests of the web console: it starts
//! Debian's `chromedriver`, which drives a headless Chromium, and speaks the W3C protocol to it
//! over HTTP on 127.0.0.1.
//!
//! Why hand-written: the protocol the tests need is a few JSON calls (new session, navigate,
//! find elements, click, type, read attributes, take a screenshot, read cookies), which
//! `reqwest` and `serde_json` — already dev-dependencies — make short. A WebDriver crate would
//! add a dependency tree (and its TLS and HTTP stacks) to every test build for that much.
//!
//! [`Browser::start`] is the entry point; it needs `chromium` and `chromium-driver` from Debian
//! (paths from `VEIL_CHROMIUM` and `VEIL_CHROMEDRIVER`). Each [`Browser`] has its own driver
//! process on a free port, its own Chromium profile and its own download folder, all removed
//! when it is closed or dropped, so tests can run in parallel and a failing test leaves no
//! process behind.
//!
//! [`Browser::accessibility_problems`] checks the basics (a title, one `<h1>`, a label for
//! every control a user fills) with element queries only, never with injected JavaScript: the
//! console's Content-Security-Policy is strict, and the check should not depend on script.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The key under which W3C WebDriver responses carry an element's id.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long `chromedriver` may take to say it is ready for sessions.
const DRIVER_READY_SECONDS_MAX: u64 = 20;
/// How often a driver is started on a fresh port if it exits before it is ready (another
/// process may have taken the free port between our probe and its bind).
const DRIVER_START_ATTEMPTS_MAX: u32 = 3;
/// The longest one WebDriver command may take; generous because a session start or a page
/// load on a busy two-core machine can take tens of seconds.
const COMMAND_SECONDS_MAX: u64 = 120;
/// How long dropping a [`Browser`] waits for the driver to close its session (and Chromium)
/// before it kills the driver's whole process group.
const QUIT_SECONDS_MAX: u64 = 10;
/// How often waits ([`Browser::wait_for`], [`Browser::downloaded`], driver start) poll.
const POLL_INTERVAL_MS: u64 = 100;

/// How to install what [`Browser::start`] needs, said in every error about a missing program.
const INSTALL_HINT: &str = "install Debian's `chromium` and `chromium-driver` \
     (apt-get install chromium chromium-driver) — CI's .ci/run does";

/// A headless Chromium driven through its own `chromedriver`; the driver (and with it the
/// browser) is stopped on [`Browser::close`] or when this is dropped.
pub(crate) struct Browser {
    driver: Child,
    /// `http://127.0.0.1:PORT`, the driver's address.
    base: String,
    /// The open session's id; `None` once it has been deleted.
    session_id: Option<String>,
    wire: Wire,
    /// Holds `downloads/` (Chromium's download folder) and `profile/` (its user data).
    dir: TempDir,
}

/// One cookie of the current page, as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cookie {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) http_only: bool,
    /// `Strict`, `Lax` or `None` as the driver spells it; absent if the driver gave none.
    pub(crate) same_site: Option<String>,
    pub(crate) secure: bool,
}

/// An element of the current page (it goes stale when the page changes).
#[derive(Debug, Clone)]
pub(crate) struct Element {
    wire: Wire,
    id: String,
}

/// What every command needs: the HTTP client and the session's address
/// (`http://127.0.0.1:PORT/session/ID`).
#[derive(Debug, Clone)]
struct Wire {
    http: reqwest::Client,
    session: String,
}

impl Browser {
    /// Starts chromedriver on a free 127.0.0.1 port (`chromedriver --port=P`), waits until
    /// GET /status says ready (at most [`DRIVER_READY_SECONDS_MAX`]), and opens a session of a
    /// headless Chromium: 1366×900, language zh-CN, downloads into a fresh temporary folder
    /// without asking, certificates checked. Binary paths come from `VEIL_CHROMIUM` (default
    /// `chromium`) and `VEIL_CHROMEDRIVER` (default `chromedriver`).
    pub(crate) async fn start() -> Result<Browser, String> {
        let chromium = find_program(
            &std::env::var("VEIL_CHROMIUM").unwrap_or_else(|_| "chromium".into()),
            "VEIL_CHROMIUM",
        )?;
        let driver_program =
            std::env::var("VEIL_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let dir = tempfile::tempdir().map_err(|e| format!("a temporary folder: {e}"))?;
        let downloads = dir.path().join("downloads");
        let profile = dir.path().join("profile");
        for folder in [&downloads, &profile] {
            std::fs::create_dir(folder)
                .map_err(|e| format!("creating {}: {e}", folder.display()))?;
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(COMMAND_SECONDS_MAX))
            .build()
            .map_err(|e| format!("an HTTP client for WebDriver: {e}"))?;
        let (driver, base) = start_driver(&driver_program, &http).await?;
        // From here on the driver is owned by a Browser, so an error below still stops it.
        let mut browser = Browser {
            driver,
            base: base.clone(),
            session_id: None,
            wire: Wire {
                http: http.clone(),
                session: String::new(),
            },
            dir,
        };
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": false,
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--window-size=1366,900",
                            "--lang=zh-CN",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                        "prefs": {
                            "download.default_directory": downloads,
                            "download.prompt_for_download": false,
                            // `--lang` sets the interface language; the pages see this one,
                            // in Accept-Language.
                            "intl.accept_languages": "zh-CN,zh",
                        },
                    },
                },
            },
        });
        let value = send(
            &http,
            Method::POST,
            &format!("{base}/session"),
            Some(capabilities),
            "New Session",
        )
        .await?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| format!("WebDriver New Session: no sessionId in {value}"))?
            .to_string();
        browser.wire.session = format!("{base}/session/{id}");
        browser.session_id = Some(id);
        Ok(browser)
    }

    /// Navigates to `url` and waits for the page to load (the driver's page-load strategy).
    pub(crate) async fn goto(&self, url: &str) -> Result<(), String> {
        self.wire
            .post("/url", json!({ "url": url }), &format!("Navigate To {url}"))
            .await
            .map(drop)
    }

    /// The current page's address.
    pub(crate) async fn url(&self) -> Result<String, String> {
        string(
            self.wire.get("/url", "Get Current URL").await?,
            "Get Current URL",
        )
    }

    /// The current page's title.
    pub(crate) async fn title(&self) -> Result<String, String> {
        string(self.wire.get("/title", "Get Title").await?, "Get Title")
    }

    /// The current page's source, as the browser serializes its document.
    pub(crate) async fn source(&self) -> Result<String, String> {
        string(
            self.wire.get("/source", "Get Page Source").await?,
            "Get Page Source",
        )
    }

    /// The first element `css` matches; the error names the selector.
    pub(crate) async fn find(&self, css: &str) -> Result<Element, String> {
        self.wire.find("", "css selector", css).await
    }

    /// All elements `css` matches, in document order (none is not an error).
    pub(crate) async fn find_all(&self, css: &str) -> Result<Vec<Element>, String> {
        self.wire.find_all("", "css selector", css).await
    }

    /// Waits (polling every 100 ms, up to `timeout`) until `css` matches at least one element.
    pub(crate) async fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element, String> {
        let start = Instant::now();
        loop {
            if let Some(found) = self.find_all(css).await?.into_iter().next() {
                return Ok(found);
            }
            if start.elapsed() >= timeout {
                let url = self.url().await.unwrap_or_else(|e| e);
                return Err(format!(
                    "no element matched `{css}` within {timeout:?} on {url}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Saves a screenshot of the viewport as a PNG at `path`, creating its parent folders.
    pub(crate) async fn screenshot(&self, path: &Path) -> Result<(), String> {
        let encoded = string(
            self.wire.get("/screenshot", "Take Screenshot").await?,
            "Take Screenshot",
        )?;
        let png = decode_base64(&encoded)
            .map_err(|e| format!("WebDriver Take Screenshot: the image is not base64: {e}"))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// The downloaded file `name` once every download has finished (no `*.crdownload` left in
    /// the download folder), waiting up to `timeout` for it to appear.
    pub(crate) async fn downloaded(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<PathBuf, String> {
        let folder = self.dir.path().join("downloads");
        let start = Instant::now();
        loop {
            let names = std::fs::read_dir(&folder)
                .and_then(|entries| {
                    entries
                        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
                        .collect::<std::io::Result<Vec<String>>>()
                })
                .map_err(|e| format!("reading the download folder {}: {e}", folder.display()))?;
            let busy = names.iter().any(|n| n.ends_with(".crdownload"));
            if !busy && names.iter().any(|n| n == name) {
                return Ok(folder.join(name));
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "download `{name}` did not finish within {timeout:?}; the download folder \
                     holds {names:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Cookies of the current page (GET /cookie).
    pub(crate) async fn cookies(&self) -> Result<Vec<Cookie>, String> {
        let value = self.wire.get("/cookie", "Get All Cookies").await?;
        let list = value
            .as_array()
            .ok_or_else(|| format!("WebDriver Get All Cookies: not a list: {value}"))?;
        list.iter()
            .map(|cookie| {
                Ok(Cookie {
                    name: string(cookie["name"].clone(), "Get All Cookies (name)")?,
                    value: string(cookie["value"].clone(), "Get All Cookies (value)")?,
                    http_only: cookie["httpOnly"].as_bool().unwrap_or(false),
                    same_site: cookie["sameSite"].as_str().map(str::to_string),
                    secure: cookie["secure"].as_bool().unwrap_or(false),
                })
            })
            .collect()
    }

    /// Accessibility basics of the current page; returns a list of problems (empty = fine):
    /// the page has a non-empty `<title>`; exactly one `<h1>`; every form control that a user
    /// fills (input except type hidden/submit/button/image/reset, select, textarea) has a
    /// label: a `<label for=its id>`, or an enclosing `<label>`, or a non-empty `aria-label` /
    /// `aria-labelledby`. Each problem names the control (tag, name attribute, id).
    pub(crate) async fn accessibility_problems(&self) -> Result<Vec<String>, String> {
        let mut problems = Vec::new();
        if self.title().await?.trim().is_empty() {
            problems.push("the page has no <title>, or an empty one: give it one".to_string());
        }
        let headings = self.find_all("h1").await?.len();
        if headings != 1 {
            problems.push(format!(
                "the page has {headings} <h1> elements; it should have exactly one"
            ));
        }
        for control in self.find_all("input, select, textarea").await? {
            let tag = control.tag().await?;
            let kind = control
                .attr("type")
                .await?
                .unwrap_or_default()
                .to_ascii_lowercase();
            if tag == "input" && NOT_FILLED_INPUT_TYPES.contains(&kind.as_str()) {
                continue;
            }
            if !control.is_labelled(self).await? {
                let name = control.attr("name").await?.unwrap_or_default();
                let id = control.attr("id").await?.unwrap_or_default();
                problems.push(format!(
                    "<{tag} name=\"{name}\" id=\"{id}\"> has no label: add a <label for> naming \
                     its id, an enclosing <label>, or aria-label / aria-labelledby"
                ));
            }
        }
        Ok(problems)
    }

    /// Deletes the session (which quits Chromium) and stops the driver.
    pub(crate) async fn close(mut self) -> Result<(), String> {
        let deleted = match self.session_id.take() {
            Some(_) => {
                self.wire
                    .call(Method::DELETE, "", None, "Delete Session")
                    .await
            }
            None => Ok(Value::Null),
        };
        // Dropping stops the driver's process group and removes the temporary folders.
        drop(self);
        deleted.map(drop)
    }
}

/// Input types that are not filled in by a user, so need no label of their own.
const NOT_FILLED_INPUT_TYPES: &[&str] = &["hidden", "submit", "button", "image", "reset"];

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed (or forgot `close`) still owns a session: ask the driver to end
        // it, which quits Chromium cleanly. This runs outside any async context we could await
        // in, so it is one plain blocking HTTP request.
        if let Some(id) = self.session_id.take() {
            let _ = delete_session_blocking(&self.base, &id);
        }
        // Chromium runs in the driver's process group (the driver started it there); killing
        // the group also stops a browser the driver could not quit.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Element {
    /// Clicks the element (scrolling it into view first, as the driver does).
    pub(crate) async fn click(&self) -> Result<(), String> {
        self.post("click", json!({}), "Element Click")
            .await
            .map(drop)
    }

    /// Types `text` into the element.
    pub(crate) async fn send_keys(&self, text: &str) -> Result<(), String> {
        self.post("value", json!({ "text": text }), "Element Send Keys")
            .await
            .map(drop)
    }

    /// Empties an input or text area.
    pub(crate) async fn clear(&self) -> Result<(), String> {
        self.post("clear", json!({}), "Element Clear")
            .await
            .map(drop)
    }

    /// The element's rendered text.
    pub(crate) async fn text(&self) -> Result<String, String> {
        string(
            self.get("text", "Get Element Text").await?,
            "Get Element Text",
        )
    }

    /// The attribute `name` (GET .../attribute/{name}); `None` if the element has none.
    pub(crate) async fn attr(&self, name: &str) -> Result<Option<String>, String> {
        let command = format!("Get Element Attribute {name}");
        match self.get(&format!("attribute/{name}"), &command).await? {
            Value::Null => Ok(None),
            Value::String(value) => Ok(Some(value)),
            other => Ok(Some(other.to_string())),
        }
    }

    /// The DOM property `name` (GET .../property/{name}).
    pub(crate) async fn prop(&self, name: &str) -> Result<Value, String> {
        let command = format!("Get Element Property {name}");
        self.get(&format!("property/{name}"), &command).await
    }

    /// The first descendant `css` matches; the error names the selector.
    pub(crate) async fn find(&self, css: &str) -> Result<Element, String> {
        self.wire
            .find(&format!("/element/{}", self.id), "css selector", css)
            .await
    }

    /// All descendants `css` matches, in document order.
    pub(crate) async fn find_all(&self, css: &str) -> Result<Vec<Element>, String> {
        self.wire
            .find_all(&format!("/element/{}", self.id), "css selector", css)
            .await
    }

    /// For a `<select>`: clicks the option whose visible text or value equals `choice`.
    pub(crate) async fn select(&self, choice: &str) -> Result<(), String> {
        let mut seen = Vec::new();
        for option in self.find_all("option").await? {
            let text = option.text().await?;
            let value = match option.prop("value").await? {
                Value::String(value) => value,
                other => other.to_string(),
            };
            if text.trim() == choice || value == choice {
                return option.click().await;
            }
            seen.push(text.trim().to_string());
        }
        let name = self.attr("name").await?.unwrap_or_default();
        Err(format!(
            "<select name=\"{name}\"> has no option `{choice}` (by text or value); its options \
             are {seen:?}"
        ))
    }

    /// The element's tag name, lower case.
    async fn tag(&self) -> Result<String, String> {
        Ok(string(
            self.get("name", "Get Element Tag Name").await?,
            "Get Element Tag Name",
        )?
        .to_ascii_lowercase())
    }

    /// Whether a label names this control: `<label for=id>`, an enclosing `<label>`, or a
    /// non-empty `aria-label` / `aria-labelledby`.
    async fn is_labelled(&self, browser: &Browser) -> Result<bool, String> {
        for aria in ["aria-label", "aria-labelledby"] {
            if self.attr(aria).await?.is_some_and(|v| !v.trim().is_empty()) {
                return Ok(true);
            }
        }
        if let Some(id) = self.attr("id").await?.filter(|id| !id.is_empty()) {
            let selector = format!("label[for={}]", css_string(&id));
            if !browser.find_all(&selector).await?.is_empty() {
                return Ok(true);
            }
        }
        let enclosing = self
            .wire
            .find_all(&format!("/element/{}", self.id), "xpath", "ancestor::label")
            .await?;
        Ok(!enclosing.is_empty())
    }

    async fn get(&self, what: &str, command: &str) -> Result<Value, String> {
        self.wire
            .get(&format!("/element/{}/{what}", self.id), command)
            .await
    }

    async fn post(&self, what: &str, body: Value, command: &str) -> Result<Value, String> {
        self.wire
            .post(&format!("/element/{}/{what}", self.id), body, command)
            .await
    }
}

impl Wire {
    async fn get(&self, path: &str, command: &str) -> Result<Value, String> {
        self.call(Method::GET, path, None, command).await
    }

    async fn post(&self, path: &str, body: Value, command: &str) -> Result<Value, String> {
        self.call(Method::POST, path, Some(body), command).await
    }

    /// Sends one command to `path` under the session and returns the response's `value`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        command: &str,
    ) -> Result<Value, String> {
        send(
            &self.http,
            method,
            &format!("{}{path}", self.session),
            body,
            command,
        )
        .await
    }

    /// Find Element from `under` (`""` for the document, `/element/ID` for an element).
    async fn find(&self, under: &str, using: &str, selector: &str) -> Result<Element, String> {
        let command = format!("Find Element `{selector}` ({using})");
        let value = self
            .post(
                &format!("{under}/element"),
                json!({ "using": using, "value": selector }),
                &command,
            )
            .await?;
        self.element(&value, &command)
    }

    /// Find Elements from `under` (`""` for the document, `/element/ID` for an element).
    async fn find_all(
        &self,
        under: &str,
        using: &str,
        selector: &str,
    ) -> Result<Vec<Element>, String> {
        let command = format!("Find Elements `{selector}` ({using})");
        let value = self
            .post(
                &format!("{under}/elements"),
                json!({ "using": using, "value": selector }),
                &command,
            )
            .await?;
        value
            .as_array()
            .ok_or_else(|| format!("WebDriver {command}: not a list: {value}"))?
            .iter()
            .map(|found| self.element(found, &command))
            .collect()
    }

    fn element(&self, value: &Value, command: &str) -> Result<Element, String> {
        let id = value[ELEMENT_KEY]
            .as_str()
            .ok_or_else(|| format!("WebDriver {command}: no element reference in {value}"))?;
        Ok(Element {
            wire: self.clone(),
            id: id.to_string(),
        })
    }
}

/// Sends one WebDriver command and returns its `value`; an error names the command, the
/// request, and the driver's `error` and `message`.
async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
    command: &str,
) -> Result<Value, String> {
    let request = format!("{method} {url}");
    let mut builder = http.request(method, url);
    if let Some(body) = body {
        builder = builder.json(&body);
    }
    let response = builder
        .send()
        .await
        .map_err(|e| format!("WebDriver {command} ({request}): {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("WebDriver {command} ({request}): reading the response: {e}"))?;
    let parsed: Value = serde_json::from_str(&text).map_err(|e| {
        let start: String = text.chars().take(200).collect();
        format!("WebDriver {command} ({request}): HTTP {status}, not JSON ({e}): {start}")
    })?;
    let value = parsed.get("value").cloned().unwrap_or(Value::Null);
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        let message = value["message"].as_str().unwrap_or("").trim();
        return Err(format!(
            "WebDriver {command} ({request}) failed: {error}: {message}"
        ));
    }
    if !status.is_success() {
        return Err(format!(
            "WebDriver {command} ({request}): HTTP {status}: {text}"
        ));
    }
    Ok(value)
}

/// A string `value`, or an error naming `command`.
fn string(value: Value, command: &str) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(format!(
            "WebDriver {command}: expected a string, got {other}"
        )),
    }
}

/// Starts `program` on a free loopback port and waits until it is ready for sessions; retries
/// on a fresh port if it exits first (the port may have been taken meanwhile).
async fn start_driver(program: &str, http: &reqwest::Client) -> Result<(Child, String), String> {
    let mut last_exit = String::new();
    for _ in 0..DRIVER_START_ATTEMPTS_MAX {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| format!("finding a free port for chromedriver: {e}"))?
            .port();
        let mut driver = spawn_driver(program, port)?;
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = driver.try_wait() {
                last_exit = format!("`{program} --port={port}` exited with {status}");
                break;
            }
            let ready = send(http, Method::GET, &format!("{base}/status"), None, "Status")
                .await
                .is_ok_and(|value| value["ready"].as_bool() == Some(true));
            if ready {
                return Ok((driver, base));
            }
            if start.elapsed() >= Duration::from_secs(DRIVER_READY_SECONDS_MAX) {
                let _ = driver.kill();
                let _ = driver.wait();
                return Err(format!(
                    "`{program} --port={port}` was not ready within \
                     {DRIVER_READY_SECONDS_MAX} s (GET /status); if it is not chromedriver, \
                     {INSTALL_HINT}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }
    Err(format!(
        "{last_exit} before it was ready, {DRIVER_START_ATTEMPTS_MAX} times; {INSTALL_HINT}"
    ))
}

/// `program --port=PORT` in a process group of its own, so that dropping a [`Browser`] can
/// stop it together with the Chromium it starts.
fn spawn_driver(program: &str, port: u16) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    Command::new(program)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            format!(
                "chromedriver (`{program}`, from VEIL_CHROMEDRIVER) could not be started: {e}; \
                 {INSTALL_HINT}"
            )
        })
}

/// The path of `program` (a path, or a name looked up in `PATH`), or an error saying how to
/// install it; chromedriver wants the browser's full path.
fn find_program(program: &str, variable: &str) -> Result<PathBuf, String> {
    let missing = || format!("`{program}` (from {variable}) was not found; {INSTALL_HINT}");
    if program.contains('/') {
        let path = PathBuf::from(program);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(missing())
        };
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .ok_or_else(missing)
}

/// DELETE /session/{id} as one blocking HTTP/1.1 request, for [`Drop`].
fn delete_session_blocking(base: &str, id: &str) -> std::io::Result<()> {
    let host = base.trim_start_matches("http://");
    let address = host
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let wait = Duration::from_secs(QUIT_SECONDS_MAX);
    let mut stream = std::net::TcpStream::connect_timeout(&address, wait)?;
    stream.set_read_timeout(Some(wait))?;
    stream.set_write_timeout(Some(wait))?;
    write!(
        stream,
        "DELETE /session/{id} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    // The driver answers once Chromium has quit; the answer itself does not matter.
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(())
}

/// `text` as a CSS string literal (for an attribute selector on an arbitrary id).
fn css_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            // A line break cannot stand in a CSS string; it is written as an escape (with the
            // space that ends the escape).
            '\n' => quoted.push_str("\\a "),
            _ => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Decodes standard base64 (as WebDriver screenshots come), padding and line breaks allowed.
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for (at, c) in text.bytes().enumerate() {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' => continue,
            _ => return Err(format!("byte {c:#04x} at {at} is not base64")),
        };
        buffer = (buffer << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Ok(bytes)
}

/// The bytes of the file the test page offers for download.
const DOWNLOAD_BYTES: &[u8] = b"veil download check\n";

/// The test page: a title, one h1, a labelled input (and ones labelled the other ways), one
/// unlabelled input, inputs that need no label, a select, a download link, and Chinese text.
const TEST_PAGE: &str = r#"<!doctype html>
<html lang="zh-CN">
<head><meta charset="utf-8"><title>Veil 浏览器测试</title></head>
<body>
<h1>数据产品</h1>
<form>
<label for="named">名称</label><input id="named" name="named">
<label>城市 <input name="city"></label>
<input name="described" aria-label="说明">
<span id="note-label">备注</span><textarea name="note" aria-labelledby="note-label"></textarea>
<select name="kind" aria-label="种类"><option value="a">甲</option><option value="b">乙</option></select>
<input id="bare" name="bare">
<input type="hidden" name="token" value="t">
<input type="submit" value="提交">
</form>
<p><a id="download" href="/x.txt">下载</a></p>
</body>
</html>
"#;

/// The largest request head the test page's server reads.
const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;

/// Serves [`TEST_PAGE`] at `/` (setting a cookie) and [`DOWNLOAD_BYTES`] as an attachment at
/// `/x.txt`, one fixed HTTP/1.1 response per connection.
async fn serve_test_page(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
                if head.len() > REQUEST_HEAD_BYTES_MAX {
                    return;
                }
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, headers, body): (&str, &str, &[u8]) = match path {
                "/" => (
                    "200 OK",
                    "Content-Type: text/html; charset=utf-8\r\n\
                     Set-Cookie: veil_check=1; Path=/; HttpOnly; SameSite=Strict\r\n",
                    TEST_PAGE.as_bytes(),
                ),
                "/x.txt" => (
                    "200 OK",
                    "Content-Type: text/plain\r\n\
                     Content-Disposition: attachment; filename=\"x.txt\"\r\n",
                    DOWNLOAD_BYTES,
                ),
                _ => (
                    "404 Not Found",
                    "Content-Type: text/plain\r\n",
                    b"not found",
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.write_all(body).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The build's `target` folder: `CARGO_TARGET_DIR` if set (and absolute: a relative one is
/// relative to wherever cargo ran, which the test cannot know), else three levels above this
/// test binary (`target/debug/deps/all-…`).
fn target_dir() -> PathBuf {
    let configured = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from);
    if let Some(dir) = configured.filter(|dir| dir.is_absolute()) {
        return dir;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lies in target/<profile>/deps")
        .to_path_buf()
}

#[tokio::test]
async fn webdriver_drives_headless_chromium() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let page = format!("http://{}/", listener.local_addr().expect("address"));
    tokio::spawn(serve_test_page(listener));

    let browser = Browser::start().await.expect("the browser starts");
    browser.goto(&page).await.expect("the page loads");
    assert_eq!(browser.url().await.expect("url"), page);
    assert_eq!(browser.title().await.expect("title"), "Veil 浏览器测试");
    browser
        .wait_for("h1", Duration::from_secs(5))
        .await
        .expect("the heading");

    // Typing reaches the input, and the Chinese text arrives intact. What was typed is the
    // `value` property: the driver's Get Element Attribute reads the markup's attribute only.
    let named = browser.find("#named").await.expect("the named input");
    named.send_keys("报告 1").await.expect("typing");
    assert_eq!(named.prop("value").await.expect("value"), json!("报告 1"));
    assert_eq!(named.attr("value").await.expect("attribute"), None);
    assert_eq!(
        named.attr("name").await.expect("attribute").as_deref(),
        Some("named")
    );
    named.clear().await.expect("clearing");
    assert_eq!(named.prop("value").await.expect("value"), json!(""));
    assert!(browser.source().await.expect("source").contains("数据产品"));

    // A selector that matches nothing is an error naming the selector.
    let missing = browser.find("#absent").await.expect_err("no such element");
    assert!(
        missing.contains("#absent") && missing.contains("no such element"),
        "{missing}"
    );

    // The check names exactly the unlabelled input, and none labelled another way.
    let problems = browser.accessibility_problems().await.expect("the check");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("<input name=\"bare\" id=\"bare\">"),
        "{problems:#?}"
    );

    let kind = browser.find("select[name=kind]").await.expect("the select");
    kind.select("乙").await.expect("choosing by text");
    assert_eq!(kind.prop("value").await.expect("value"), json!("b"));
    let refused = kind.select("丙").await.expect_err("no such option");
    assert!(
        refused.contains("丙") && refused.contains("乙"),
        "{refused}"
    );

    let cookies = browser.cookies().await.expect("cookies");
    let cookie = cookies
        .iter()
        .find(|c| c.name == "veil_check")
        .expect("the page's cookie");
    assert_eq!(cookie.value, "1");
    assert!(cookie.http_only);
    assert_eq!(cookie.same_site.as_deref(), Some("Strict"));
    assert!(!cookie.secure);

    browser
        .find("#download")
        .await
        .expect("the link")
        .click()
        .await
        .expect("click");
    let file = browser
        .downloaded("x.txt", Duration::from_secs(20))
        .await
        .expect("the download");
    assert_eq!(std::fs::read(&file).expect("the file"), DOWNLOAD_BYTES);

    let shot = target_dir().join("browser-screenshots/webdriver.png");
    browser.screenshot(&shot).await.expect("screenshot");
    let png = std::fs::read(&shot).expect("the screenshot file");
    assert_eq!(png.get(..8), Some(&b"\x89PNG\r\n\x1a\n"[..]));

    browser.close().await.expect("the session closes");
}
