//! Tidy: the architecture's rules, checked mechanically (ARCHITECTURE.md, "Invariants").
//!
//! - Which crates may depend on which: the kernel (`veil-gate`) on no other Veil crate but
//!   the SDK; the domain (`veil-runtime`) on the kernel and the SDK, and on no front-end
//!   library (clap, axum, utoipa, reqwest) nor the demo's randomness (rand); the front ends
//!   (`veil-server`, `veil-cli`) on the domain and the kernel's front-end surface only.
//! - Front ends name only the kernel items on [`FRONT_END_KERNEL_ITEMS`]: never the sandbox,
//!   the analysis, the mapping stage, the budget token or the release.
//! - No public function of the kernel returns record batches, except the one that hands a
//!   product writer the rows the gate released ([`KERNEL_BATCH_FUNCTIONS`]).
//!
//! Each rule is a test that names the file and line that breaks it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The workspace's crates: folder, package name, and the Veil crates its `[dependencies]`
/// may name.
const CRATES: &[(&str, &str, &[&str])] = &[
    ("sdk", "veil-sdk", &[]),
    ("gate", "veil-gate", &["veil-sdk"]),
    ("runtime", "veil-runtime", &["veil-gate", "veil-sdk"]),
    (
        "server",
        "veil-server",
        &["veil-runtime", "veil-gate", "veil-sdk"],
    ),
    // The console calls the API's handlers in process and the domain; never the kernel.
    (
        "console",
        "veil-console",
        &["veil-server", "veil-runtime", "veil-sdk"],
    ),
    ("testkit", "veil-testkit", &[]),
    (
        "cli",
        "veil-cli",
        &[
            "veil-runtime",
            "veil-gate",
            "veil-server",
            "veil-console",
            "veil-testkit",
            "veil-sdk",
        ],
    ),
];

/// Libraries that belong to a front end (command line, HTTP, HTTP client) or to test data:
/// the kernel and the domain may not depend on them.
const FRONT_END_LIBRARIES: &[&str] = &[
    "clap",
    "axum",
    "utoipa",
    "reqwest",
    "tower",
    "rand",
    "rand_chacha",
    "askama",
    "plotters",
];

/// The kernel's surface a front end may name. Everything else of `veil_gate` a front end
/// reaches through the domain (`veil_runtime`), which decides when the kernel runs.
const FRONT_END_KERNEL_ITEMS: &[&str] = &[
    // Refusals carry rule names to operators: every front end prints or serializes them.
    "Refusal",
    "Rule",
    "rules::Refusal",
    "rules::Rule",
    "rules::Violation",
    // The one message an operator sees for a failure after ε was reserved.
    "FAILED_MESSAGE",
    // The `veil` binary answers as a job's child process.
    "job",
    "job::serve_child_if_asked",
    // The demo sizes its WASM templates' wall limit against the largest one allowed.
    "sandbox::JOB_WALL_MS_MAX",
];

/// Public kernel functions that may return record batches, as `file: fn name`. The rows a
/// [`veil_gate::Released`] body holds have passed the gate: they are the product.
const KERNEL_BATCH_FUNCTIONS: &[&str] = &["release.rs: rows"];

/// Types that carry rows.
const BATCH_TYPES: &[&str] = &[
    "RecordBatch",
    "SendableRecordBatchStream",
    "RecordBatchStream",
    "ArrayRef",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .to_path_buf()
}

fn manifest(folder: &str) -> toml::Table {
    let path = workspace().join(folder).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).expect("a crate's Cargo.toml");
    text.parse().expect("Cargo.toml parses")
}

/// Names in a crate's `[dependencies]` (not dev- or build-dependencies: those never reach a
/// shipped binary's library code).
fn dependencies(folder: &str) -> BTreeSet<String> {
    let manifest = manifest(folder);
    let mut names = BTreeSet::new();
    if let Some(deps) = manifest.get("dependencies").and_then(|d| d.as_table()) {
        names.extend(deps.keys().cloned());
    }
    if let Some(targets) = manifest.get("target").and_then(|t| t.as_table()) {
        for target in targets.values() {
            if let Some(deps) = target.get("dependencies").and_then(|d| d.as_table()) {
                names.extend(deps.keys().cloned());
            }
        }
    }
    names
}

#[test]
fn crates_depend_only_on_what_the_architecture_allows() {
    let veil: BTreeSet<&str> = CRATES.iter().map(|(_, package, _)| *package).collect();
    let mut broken = Vec::new();
    for (folder, package, allowed) in CRATES {
        let name = manifest(folder)["package"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(&name, package, "{folder}/Cargo.toml names its package");
        for dep in dependencies(folder) {
            if veil.contains(dep.as_str()) && !allowed.contains(&dep.as_str()) {
                broken.push(format!("{package} depends on {dep}"));
            }
        }
    }
    for folder in ["gate", "runtime"] {
        for dep in dependencies(folder) {
            if FRONT_END_LIBRARIES.contains(&dep.as_str()) {
                broken.push(format!(
                    "{folder}/Cargo.toml: the kernel and the domain may not depend on {dep}"
                ));
            }
        }
    }
    // The domain library builds no guests and runs no tools: no build script.
    for folder in ["gate", "runtime"] {
        if workspace().join(folder).join("build.rs").exists() {
            broken.push(format!("{folder}/build.rs: the library has a build script"));
        }
    }
    assert!(
        broken.is_empty(),
        "dependency rules broken:\n{}",
        broken.join("\n")
    );
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The code of a line, without a trailing `//` comment (good enough for paths: Veil's code
/// has no `//` inside string literals that also name `veil_gate::`).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

/// The kernel paths a source text names after `crate_name::`, with `use` groups expanded:
/// `veil_gate::{a, b::{c, d}}` gives `a`, `b::c`, `b::d`.
fn kernel_paths(text: &str, crate_name: &str) -> Vec<(usize, String)> {
    let prefix = format!("{crate_name}::");
    let mut found = Vec::new();
    let code: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(n, line)| (n + 1, code_of(line)))
        .collect();
    // Join the code so a `use` group over several lines reads as one.
    let mut joined = String::new();
    let mut line_at = Vec::new();
    for (n, line) in &code {
        for _ in 0..=line.len() {
            line_at.push(*n);
        }
        joined.push_str(line);
        joined.push('\n');
    }
    let mut start = 0;
    while let Some(at) = joined[start..].find(&prefix) {
        let at = start + at;
        let before = joined[..at].chars().next_back();
        start = at + prefix.len();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let line = line_at.get(at).copied().unwrap_or(0);
        for path in expand(&joined[start..]) {
            found.push((line, path));
        }
    }
    found
}

/// Expands the path (or `{…}` group) at the start of `rest`.
fn expand(rest: &str) -> Vec<String> {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 1;
        let mut end = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = &group[..end];
        let mut items = Vec::new();
        let mut depth = 0;
        let mut item_start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&inner[item_start..i]);
                    item_start = i + 1;
                }
                _ => {}
            }
        }
        items.push(&inner[item_start..]);
        return items
            .into_iter()
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .flat_map(expand)
            .collect();
    }
    let mut path = String::new();
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            path.push(c);
        } else if rest[i..].starts_with("::{") {
            return expand(&rest[i + 2..])
                .into_iter()
                .map(|tail| {
                    if tail == "self" {
                        path.clone()
                    } else {
                        format!("{path}::{tail}")
                    }
                })
                .collect();
        } else if rest[i..].starts_with("::") {
            path.push_str("::");
            chars.next();
        } else {
            break;
        }
    }
    let path = path
        .split(" as ")
        .next()
        .unwrap_or_default()
        .trim_end_matches("::")
        .to_string();
    vec![path]
}

#[test]
fn the_path_expander_reads_use_groups() {
    let text = "use veil_gate::{Refusal, rules::{Rule, Violation}, job};\nlet x = veil_gate::FAILED_MESSAGE; // veil_gate::sandbox\n";
    let paths: Vec<String> = kernel_paths(text, "veil_gate")
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        paths,
        [
            "Refusal",
            "rules::Rule",
            "rules::Violation",
            "job",
            "FAILED_MESSAGE"
        ]
    );
}

#[test]
fn front_ends_name_only_the_kernels_front_end_surface() {
    let mut broken = Vec::new();
    for folder in ["server/src", "cli/src", "console/src"] {
        for file in rust_files(&workspace().join(folder)) {
            let text = std::fs::read_to_string(&file).expect("a source file");
            for (line, path) in kernel_paths(&text, "veil_gate") {
                if !FRONT_END_KERNEL_ITEMS.contains(&path.as_str()) {
                    broken.push(format!(
                        "{}:{line}: names veil_gate::{path}",
                        file.strip_prefix(workspace()).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "front ends reach kernel internals (go through veil_runtime instead, or add the item to the front-end surface in tests/all/tidy.rs with the reason):\n{}",
        broken.join("\n")
    );
}

/// Public function signatures in `text`: (line, name, signature up to the body).
fn public_functions(text: &str) -> Vec<(usize, String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let code = code_of(line).trim_start();
        let rest = code
            .strip_prefix("pub async fn ")
            .or_else(|| code.strip_prefix("pub fn "))
            .or_else(|| code.strip_prefix("pub const fn "));
        let Some(rest) = rest else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let mut signature = String::new();
        for next in &lines[n..] {
            let code = code_of(next);
            match code.find('{').or_else(|| code.find(';')) {
                Some(end) if !signature.is_empty() || code.contains("fn ") => {
                    signature.push_str(&code[..end]);
                    break;
                }
                _ => signature.push_str(code),
            }
        }
        found.push((n + 1, name, signature));
    }
    found
}

#[test]
fn no_public_kernel_function_returns_rows() {
    let gate = workspace().join("gate/src");
    let mut broken = Vec::new();
    for file in rust_files(&gate) {
        let relative = file
            .strip_prefix(&gate)
            .unwrap_or(&file)
            .display()
            .to_string();
        // Test modules are compiled only into the kernel's own tests.
        if relative.contains("tests") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("a source file");
        for (line, name, signature) in public_functions(&text) {
            let Some((_, returns)) = signature.split_once("->") else {
                continue;
            };
            if BATCH_TYPES.iter().any(|t| returns.contains(t))
                && !KERNEL_BATCH_FUNCTIONS.contains(&format!("{relative}: {name}").as_str())
            {
                broken.push(format!(
                    "gate/src/{relative}:{line}: pub fn {name} -> {returns}"
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "public kernel functions return rows (make them pub(crate), or return noisy aggregates only):\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_row_check_sees_a_function_that_returns_batches() {
    let text = "pub async fn leak(\n    plan: LogicalPlan,\n) -> Result<Vec<RecordBatch>, Error> {\n}\npub(crate) fn fine() -> RecordBatch {}\n";
    let found = public_functions(text);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, "leak");
    assert!(found[0].2.contains("Vec<RecordBatch>"));
}

/// The top-level modules of the crate in `src` that each names through `crate::` (or `super::`
/// from a top-level file's own submodules, which stay inside it).
fn module_edges(src: &Path) -> BTreeSet<(String, String)> {
    let mut edges = BTreeSet::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap_or(&file);
        let module = relative
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .unwrap_or_default();
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("a source file");
        for (_, path) in kernel_paths(&text, "crate") {
            let target = path.split("::").next().unwrap_or_default().to_string();
            let is_module = src.join(format!("{target}.rs")).exists() || src.join(&target).is_dir();
            if is_module && target != module {
                edges.insert((module.clone(), target));
            }
        }
    }
    edges
}

/// A cycle among `edges`, if any, as the modules on it.
fn cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeSet<(String, String)>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for (_, to) in edges.iter().filter(|(from, _)| from == node) {
            if let Some(found) = visit(to, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for (from, _) in edges {
        if let Some(found) = visit(from, edges, &mut Vec::new(), &mut done) {
            return Some(found);
        }
    }
    None
}

#[test]
fn the_front_ends_modules_import_one_another_without_cycles() {
    for folder in ["cli/src", "server/src", "console/src"] {
        let edges = module_edges(&workspace().join(folder));
        assert!(
            cycle(&edges).is_none(),
            "{folder}: modules import each other in a cycle: {}",
            cycle(&edges).unwrap_or_default().join(" → ")
        );
    }
    // The check sees a cycle when there is one.
    let planted: BTreeSet<(String, String)> = [("local", "client"), ("client", "local")]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let found = cycle(&planted).expect("the planted cycle is found");
    assert!(
        found.len() == 3 && found.contains(&"local".to_string()) && found[0] == found[2],
        "{found:?}"
    );
}

/// The domain's bounded contexts (ARCHITECTURE.md): the modules of each, and the tables it
/// owns. Only a context's own modules run SQL on its tables; `store.rs` holds the schema and
/// its upgrades, so it names every table.
const CONTEXTS: &[(&[&str], &[&str])] = &[
    (
        &["catalog.rs", "grants.rs", "principals.rs"],
        &[
            "datasets",
            "dataset_objects",
            "dataset_quality",
            "dataset_versions",
            "grants",
            "grant_dispositions",
            "grant_requests",
            "principals",
        ],
    ),
    (
        &["templates.rs", "compile.rs"],
        &["templates", "modules", "module_refusals"],
    ),
    (
        &["jobs.rs", "budget.rs"],
        &["jobs", "job_submissions", "budget_spend"],
    ),
    (
        &["products.rs", "metering.rs", "audit/"],
        &["products", "product_states", "meter", "audit"],
    ),
    (&["freezes.rs"], &["freezes"]),
    (&["corrections.rs"], &["corrections"]),
    (
        &[
            "prices.rs",
            "ledger.rs",
            "market.rs",
            "settlement.rs",
            "disputes.rs",
        ],
        &[
            "price_book",
            "ledger_postings",
            "ledger_lines",
            "listings",
            "purchases",
            "downloads",
            "recalls",
            "disputes",
        ],
    ),
];

/// Where a module still runs SQL on another context's table, and why it may. The list only
/// shrinks: a new entry needs a reason here, and one no longer needed must be removed (the
/// test says so), so the rule cannot rot silently.
const FOREIGN_SQL_ALLOWED: &[(&str, &str)] = &[
    // The schema and its upgrades.
    ("store.rs", "*"),
    // The auditor compares every record with the log, on purpose.
    ("audit/cross_check.rs", "*"),
    // The sweep decides which files the store knows, under the writers' lock.
    ("sweep.rs", "datasets"),
    ("sweep.rs", "jobs"),
    ("sweep.rs", "products"),
    // Still to move behind the owners' functions (issue 10, item 4, left for later).
    ("jobs.rs", "products"),
    ("market.rs", "products"),
    ("market.rs", "principals"),
    ("products.rs", "recalls"),
    ("principals.rs", "audit"),
];

#[test]
fn each_table_is_queried_only_by_the_module_that_owns_it() {
    let runtime = workspace().join("runtime/src");
    let mut broken = Vec::new();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    for file in rust_files(&runtime) {
        let module = file
            .strip_prefix(&runtime)
            .unwrap_or(&file)
            .display()
            .to_string();
        let text = std::fs::read_to_string(&file).expect("a source file");
        for (line, code) in text.lines().enumerate() {
            let code = code_of(code);
            for (modules, tables) in CONTEXTS {
                for table in tables.iter() {
                    let touches = ["FROM", "JOIN", "INTO", "UPDATE"].iter().any(|verb| {
                        code.split(verb).skip(1).any(|rest| {
                            rest.trim_start()
                                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                                .next()
                                == Some(table)
                        })
                    });
                    if !touches || modules.iter().any(|m| module.starts_with(m)) {
                        continue;
                    }
                    let allowed = FOREIGN_SQL_ALLOWED
                        .iter()
                        .any(|(m, t)| *m == module && (*t == "*" || t == table));
                    if allowed {
                        used.insert((module.clone(), table.to_string()));
                    } else {
                        broken.push(format!(
                            "runtime/src/{module}:{}: SQL on `{table}`, which {} owns",
                            line + 1,
                            modules.join(", ")
                        ));
                    }
                }
            }
        }
    }
    for (module, table) in FOREIGN_SQL_ALLOWED {
        if *table != "*" && !used.contains(&(module.to_string(), table.to_string())) {
            broken.push(format!(
                "tests/all/tidy.rs: {module} no longer touches `{table}`; remove it from FOREIGN_SQL_ALLOWED"
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "a module runs SQL on another context's table (call a function of the owner instead):\n{}",
        broken.join("\n")
    );
}
