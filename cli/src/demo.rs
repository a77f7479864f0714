//! `veil demo`: the whole flow on generated data, told as a short story.
//!
//! It makes a store in a temporary folder (or `--keep DIR`), generates the Shanxi demo data,
//! and then plays the bureau, an operator and a buyer in turn, using the same library calls
//! the CLI uses: registration, a grant, templates (one refused), jobs (one out of budget), the
//! meter, offline verification, a sale — the buyer buys and downloads through `veil serve`
//! with the SDK, as a real buyer would — and the month's settlement with its statements. The
//! policy and template files it uses are the ones in `examples/`, compiled in so the demo
//! needs no paths.
//!
//! The story takes place last month (the demo pins its own clock there, see
//! [`story_instant`]), so that at its end the bureau can close that month: a period is
//! settled only once it has ended.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Days;
use datafusion::arrow::util::pretty::pretty_format_batches;

use veil_runtime::budget::Period;
use veil_runtime::error::{Error, Result};
use veil_runtime::grants::{Disposition, GrantRequest};
use veil_runtime::ids::{Fen, ProductId};
use veil_runtime::jobs::{JobOutcome, JobRequest};
use veil_runtime::principals::{self, Role};
use veil_runtime::store::Store;
use veil_runtime::templates::{ApprovalRequest, SpecRules, TemplateSpec};
use veil_runtime::{audit, catalog, clock, grants, jobs, market, metering, settlement, templates};
use veil_testkit::demo_data;

const SOCIAL_INSURANCE_POLICY: &str = include_str!("../../examples/policies/social_insurance.toml");
const ENTERPRISE_POLICY: &str = include_str!("../../examples/policies/enterprise_registry.toml");
const INCOME_TEMPLATE: &str = include_str!("../../examples/templates/income_by_city_gender.toml");
const ENTERPRISE_TEMPLATE: &str =
    include_str!("../../examples/templates/enterprises_by_rating.toml");
const RAW_TEMPLATE: &str = include_str!("../../examples/templates/raw_incomes.toml");
const PENSION_TEMPLATE: &str = include_str!("../../examples/templates/pension_eligibility.toml");
const CREDIT_TEMPLATE: &str = include_str!("../../examples/templates/credit_risk.toml");
/// The example mappers, built from `examples/wasm/` by the testkit's build script.
use veil_testkit::{CREDIT_MODULE, PENSION_MODULE};

/// The operator of the story.
pub(crate) const DEMO_OPERATOR: &str = "jinyun-data-operations";
/// The buyer of the story.
const DEMO_BUYER: &str = "taiyuan-urban-planning-institute";
/// The price the bureau lists the first product at, in fen (¥120.00).
const DEMO_SALE_PRICE_FEN: i64 = 12_000;
/// Days before the start of the current month the story takes place (mid last month).
const STORY_DAYS_BEFORE_THIS_MONTH: u64 = 15;
/// Product rows shown in the story.
const PREVIEW_ROWS: usize = 6;

/// What the demo did: printed at its end, and checked (every released product verified).
#[derive(Debug, Clone)]
pub(crate) struct DemoSummary {
    pub released_jobs: usize,
    pub rejected_jobs: usize,
    pub audit_entries: i64,
    pub products_verified: usize,
}

/// The bureau's approval of a submitted SQL template, as the demo tells it: what the terms
/// give each output column at 95 % confidence and any grouping warning (what `veil template
/// approve` prints), then the approval.
async fn approve_telling(
    store: &mut Store,
    out: &mut dyn Write,
    id: &str,
    request: ApprovalRequest,
) -> Result<templates::Template> {
    let preview = templates::preview(store, id, &request).await?;
    let template = templates::approve(store, id, request.clone())?;
    say(
        out,
        format!(
            "\n[operator] submitted `{}`; [bureau] approved it as {} at ε {}; accuracy at 95 % (from the noise scales, no data read):",
            template.spec.name,
            &template.id.as_str()[..16],
            request.epsilon
        ),
    )?;
    for column in &preview.accuracy {
        let at = column
            .at_units
            .map(|units| format!(" in a group of {units}"))
            .unwrap_or_default();
        say(
            out,
            format!(
                "    {:<22} {:<8} ±{:.2}{at}",
                column.column, column.kind, column.error
            ),
        )?;
    }
    for warning in preview
        .accuracy
        .iter()
        .filter_map(|c| c.warning.as_ref())
        .chain(&preview.warnings)
    {
        say(out, format!("    warning: {warning}"))?;
    }
    Ok(template)
}

fn say(out: &mut dyn Write, text: impl AsRef<str>) -> Result<()> {
    writeln!(out, "{}", text.as_ref())
        .map_err(|e| Error::internal(format!("printing the demo: {e}")))
}

/// Runs the demo with `rows` social-insurance records.
pub(crate) async fn run(
    rows: u64,
    keep: Option<&Path>,
    out: &mut dyn Write,
) -> Result<DemoSummary> {
    if rows < 1_000 {
        return Err(Error::invalid(
            "--rows must be at least 1000 for the story to release anything",
        ));
    }
    let story = story_instant()?;
    clock::pin(Some(story));
    let told = tell(rows, keep, out, story).await;
    clock::pin(None);
    told
}

/// An instant in the middle of last month, bureau time: when the story happens.
fn story_instant() -> Result<chrono::DateTime<chrono::Utc>> {
    let (this_month, _) = Period::of(clock::now())
        .bounds()
        .map_err(|e| Error::internal(format!("the current period: {e}")))?;
    this_month
        .checked_sub_days(Days::new(STORY_DAYS_BEFORE_THIS_MONTH))
        .ok_or_else(|| Error::internal("the current period starts before any date"))
}

/// The story itself, told with the clock pinned at `story`.
async fn tell(
    rows: u64,
    keep: Option<&Path>,
    out: &mut dyn Write,
    story: chrono::DateTime<chrono::Utc>,
) -> Result<DemoSummary> {
    let period = Period::of(story);
    let temp;
    let root = match keep {
        Some(dir) => dir.to_path_buf(),
        None => {
            temp = tempfile::tempdir()
                .map_err(|e| Error::internal(format!("making a temporary folder: {e}")))?;
            temp.path().to_path_buf()
        }
    };
    let store_dir = root.join("store");
    let raw_dir = root.join("provider-files");

    say(
        out,
        "━━ Veil demo: raw data does not leave the domain; usable but invisible ━━",
    )?;
    let mut store = Store::init(&store_dir)?;
    let d = store_dir.display().to_string();
    say(
        out,
        format!(
            "\nThe story takes place in {period} (the demo sets its clock there), so the bureau can close the month at the end.\n[bureau] created a domain store in {d}"
        ),
    )?;

    // A large --rows takes a while: a progress line on stderr, when it is a terminal.
    let mut meter = crate::progress::Meter::stderr();
    let written = demo_data::write_demo_data_with_progress(
        rows,
        &raw_dir,
        demo_data::DEMO_SEED,
        &mut |rows, bytes| meter.show("generating demo data", rows, bytes, false),
    );
    meter.finish();
    let summary = written.map_err(|e| Error::internal(format!("generating demo data: {e}")))?;
    say(
        out,
        format!(
            "[provider] exported {} social-insurance records ({} persons) and {} enterprises as Parquet",
            summary.social_insurance_rows, summary.persons, summary.enterprises
        ),
    )?;

    let social = catalog::register(
        &mut store,
        "social_insurance",
        &raw_dir.join("social_insurance.parquet"),
        catalog::Policy::parse(SOCIAL_INSURANCE_POLICY)?,
    )?;
    let enterprise = catalog::register(
        &mut store,
        "enterprise_registry",
        &raw_dir.join("enterprise_registry.parquet"),
        catalog::Policy::parse(ENTERPRISE_POLICY)?,
    )?;
    for d in [&social, &enterprise] {
        say(
            out,
            format!(
                "[bureau] registered `{}`: {} rows from {}, acquired {}, privacy unit `{}`",
                d.name, d.rows, d.policy.provider, d.policy.acquired_on, d.policy.privacy_unit
            ),
        )?;
    }

    let today = clock::today();
    let grant = grants::create(
        &mut store,
        GrantRequest {
            operator: DEMO_OPERATOR.into(),
            datasets: vec![social.name.clone(), enterprise.name.clone()],
            purpose: "regional labour-market and enterprise statistics for Shanxi planning".into(),
            valid_from: today.checked_sub_days(Days::new(30)).unwrap_or(today),
            valid_to: today.checked_add_days(Days::new(365)).unwrap_or(today),
            epsilon_per_month: 3.5,
            delta_per_month: 1e-4,
            disposition: Disposition::Archive,
            ownership: veil_runtime::grants::Ownership::Operator,
        },
    )?;
    say(
        out,
        format!(
            "[bureau] granted both datasets to operator `{DEMO_OPERATOR}` ({}), ε 3.5 per month, until {}",
            grant.id, grant.valid_to
        ),
    )?;

    // The operator submits three templates; the gate's static rules refuse one at once.
    let raw = TemplateSpec::parse(RAW_TEMPLATE)?;
    let raw_template = templates::submit(&mut store, DEMO_OPERATOR, raw)?;
    if let Err(refusal) = jobs::check_static(&store, &raw_template, &grant).await? {
        say(
            out,
            format!(
                "\n[operator] submitted template `{}`; the gate refuses it:",
                raw_template.spec.name
            ),
        )?;
        for v in &refusal.violations {
            say(out, format!("    - [{}] {}", v.rule, v.message))?;
        }
        templates::reject(
            &mut store,
            raw_template.id.as_str(),
            "refused by the release gate: raw rows and an identifier would leave the domain",
        )?;
        say(out, "[bureau] rejected it")?;
    }

    let income = templates::submit(
        &mut store,
        DEMO_OPERATOR,
        TemplateSpec::parse(INCOME_TEMPLATE)?,
    )?;
    let income = approve_telling(
        &mut store,
        out,
        income.id.as_str(),
        ApprovalRequest {
            epsilon: 1.0,
            delta: 1e-6,
            k: 10,
            max_groups: 1,
            max_rows: 1,
            price_per_run_fen: 5_000,
            ..ApprovalRequest::default()
        },
    )
    .await?;
    let firms = templates::submit(
        &mut store,
        DEMO_OPERATOR,
        TemplateSpec::parse(ENTERPRISE_TEMPLATE)?,
    )?;
    let firms = approve_telling(
        &mut store,
        out,
        firms.id.as_str(),
        ApprovalRequest {
            epsilon: 0.5,
            delta: 1e-6,
            k: 10,
            max_groups: 3,
            max_rows: 1,
            price_per_run_fen: 8_000,
            ..ApprovalRequest::default()
        },
    )
    .await?;

    // Two WASM templates: logic SQL cannot say, run once per privacy unit on a fresh
    // instance, with only their bounded output going through the gate.
    let modules_dir = root.join("operator-modules");
    std::fs::create_dir_all(&modules_dir).map_err(|e| Error::io("creating", &modules_dir, e))?;
    let mut wasm_templates = Vec::new();
    for (text, module_name, module, epsilon, max_groups, max_rows) in [
        (
            PENSION_TEMPLATE,
            "pension_eligibility.wasm",
            PENSION_MODULE,
            0.5,
            1,
            1,
        ),
        (
            CREDIT_TEMPLATE,
            "credit_risk.wasm",
            CREDIT_MODULE,
            0.5,
            3,
            3,
        ),
    ] {
        let path = modules_dir.join(module_name);
        veil_runtime::files::write_atomic(&path, module, false)?;
        let (spec, bytes) = TemplateSpec::parse_file(text, &modules_dir)?;
        let submitted = templates::submit_with_module(&mut store, DEMO_OPERATOR, spec, bytes)?;
        let approved = templates::approve(
            &mut store,
            submitted.id.as_str(),
            ApprovalRequest {
                epsilon,
                delta: 1e-6,
                k: 10,
                max_groups,
                max_rows,
                price_per_run_fen: 12_000,
                wall_seconds: wasm_wall_seconds(rows),
                ..ApprovalRequest::default()
            },
        )?;
        say(
            out,
            format!(
                "\n[operator] submitted WASM template `{}` (mapper {module_name}, {} bytes, built from examples/wasm); [bureau] approved it as {}",
                approved.spec.name,
                module.len(),
                &approved.id.as_str()[..16]
            ),
        )?;
        wasm_templates.push(approved);
    }
    let (pension, credit) = (&wasm_templates[0], &wasm_templates[1]);

    let mut released = 0;
    let mut rejected = 0;
    let mut product_dirs = Vec::new();
    // 1 + 0 + 0.5 + 1 + 0.5 + 0.5 = 3.5 spends the month's ε; the last run finds nothing left.
    let runs: [(&templates::Template, Option<(&str, &str)>); 7] = [
        (&income, Some(("year", "2025"))),
        (&income, Some(("year", "2025"))),
        (&firms, Some(("city", "Taiyuan"))),
        (&income, Some(("year", "2024"))),
        (pension, Some(("born_before", "1971"))),
        (credit, None),
        (&income, Some(("year", "2023"))),
    ];
    for (template, param) in runs {
        say(
            out,
            format!(
                "\n[operator] veil job run --data-dir {d} --operator {DEMO_OPERATOR} --template {}{}",
                template.spec.name,
                param.map_or(String::new(), |(name, value)| format!(
                    " --param {name}={value}"
                ))
            ),
        )?;
        let outcome = jobs::run(
            &mut store,
            JobRequest {
                operator: DEMO_OPERATOR.into(),
                template: template.id.to_string(),
                params: param
                    .map(|(name, value)| vec![(name.into(), value.into())])
                    .unwrap_or_default(),
                grant: None,
            },
        )
        .await?;
        match &outcome {
            JobOutcome::Released {
                product_id,
                dir,
                reused,
                rows,
                ..
            } => {
                released += 1;
                if *reused {
                    say(
                        out,
                        format!(
                            "  released again: identical to an earlier job, so product {product_id} is returned and no ε is spent"
                        ),
                    )?;
                } else {
                    say(
                        out,
                        format!(
                            "  released product {product_id}\n  files: {}",
                            dir.display()
                        ),
                    )?;
                    product_dirs.push((product_id.clone(), dir.clone()));
                }
                if let Some(batch) = rows {
                    let preview = batch.slice(0, batch.num_rows().min(PREVIEW_ROWS));
                    let table = pretty_format_batches(&[preview])
                        .map_err(|e| Error::internal(format!("formatting a preview: {e}")))?;
                    say(
                        out,
                        format!("  first rows ({} in all):\n{table}", batch.num_rows()),
                    )?;
                }
            }
            JobOutcome::Rejected { refusal, .. } => {
                rejected += 1;
                say(out, "  rejected:")?;
                for v in &refusal.violations {
                    say(out, format!("    - [{}] {}", v.rule, v.message))?;
                }
            }
            JobOutcome::Failed { reason, .. } => {
                say(out, format!("  failed: {reason}"))?;
            }
            JobOutcome::Cancelled { .. } => say(out, "  cancelled")?,
        }
    }

    say(out, format!("\n[bureau] veil meter list --data-dir {d}"))?;
    let records = metering::list(store.conn())?;
    let table = crate::output::meter_table(&records);
    say(out, table.trim_end())?;

    let public = store.signing_key().verifying_key();
    let mut verified_products = 0;
    for (_, dir) in &product_dirs {
        let verified = veil_sdk::manifest::verify_product_dir(dir, Some(&public))
            .map_err(|e| Error::internal(format!("verifying a demo product: {e}")))?;
        verified_products += 1;
        say(
            out,
            format!(
                "\n[operator] veil product verify {} --data-dir {d} → signature and digests OK (sources: {}; ε {}; {} groups released)",
                dir.display(),
                verified
                    .manifest
                    .sources
                    .iter()
                    .map(|s| format!("{} acquired {}", s.name, s.acquired_on))
                    .collect::<Vec<_>>()
                    .join(", "),
                verified.manifest.privacy.epsilon,
                verified.manifest.privacy.groups_released
            ),
        )?;
    }

    let Some((first, _)) = product_dirs.first() else {
        return Err(Error::internal("the demo released no product to sell"));
    };
    sell_and_buy(&mut store, &store_dir, &root, first.as_str(), out).await?;

    // The month is over (the clock runs again): the bureau closes it.
    clock::pin(None);
    let settled = settlement::settle(&mut store, period.as_str(), "bureau")?;
    say(
        out,
        format!(
            "\n[bureau] a month later: veil settle --period {period} --data-dir {d} → {} statements in {}",
            settled.statements.len(),
            settled.dir.display()
        ),
    )?;
    for statement in &settled.statements {
        say(
            out,
            format!(
                "  {:<55} net {:>12}  {}",
                statement.party,
                statement.net.to_string(),
                statement
                    .csv
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
            ),
        )?;
    }

    let verified = audit::verify(&store)?.map_err(|broken| {
        Error::internal(format!(
            "the demo's own audit log failed to verify: {broken}"
        ))
    })?;
    say(
        out,
        format!(
            "\n[bureau] veil audit verify → {} entries, hash chain intact, head {}…",
            verified.entries,
            &verified.head_hash[..16]
        ),
    )?;
    if keep.is_some() {
        say(
            out,
            format!(
                "\nThe store is kept in {d}; try `veil meter list --data-dir {d}`, or `veil serve --data-dir {d}` and open its address followed by /console in a browser, signing in with the key `veil principal add --role bureau --name officer --data-dir {d}` prints."
            ),
        )?;
    } else {
        say(
            out,
            "\nThe store was in a temporary folder and is gone; `veil demo --keep DIR` keeps it, to try the commands above on it.",
        )?;
    }
    Ok(DemoSummary {
        released_jobs: released,
        rejected_jobs: rejected,
        audit_entries: verified.entries,
        products_verified: verified_products,
    })
}

/// The market step: the bureau lists `product`, and a buyer finds it among the offers, buys
/// it, downloads it and verifies it offline — through `veil serve` on 127.0.0.1 and the SDK,
/// as a buyer's program would.
async fn sell_and_buy(
    store: &mut Store,
    store_dir: &Path,
    root: &Path,
    product: &str,
    out: &mut dyn Write,
) -> Result<()> {
    let d = store_dir.display();
    let listing = market::list_for_sale(
        store,
        Role::Bureau,
        "bureau",
        &ProductId::new(product),
        Fen(DEMO_SALE_PRICE_FEN),
    )?;
    say(
        out,
        format!(
            "\n[bureau] veil product sell {product} --price-fen {} --data-dir {d} → offered at {}",
            DEMO_SALE_PRICE_FEN, listing.price
        ),
    )?;
    let (_, key) = principals::add(store, Role::Buyer, DEMO_BUYER)?;
    say(
        out,
        format!(
            "[bureau] veil principal add --role buyer --name {DEMO_BUYER} --data-dir {d} → a key, shown once"
        ),
    )?;

    let state = Arc::new(veil_server::AppState {
        stores: Arc::new(veil_server::StorePool::new(store_dir)?),
        workers: veil_server::Workers::start(
            store_dir,
            1,
            veil_server::workers::QUEUE_JOBS_DEFAULT,
        )?,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::internal(format!("listening on 127.0.0.1 for the demo: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("the demo server's address: {e}")))?;
    let server = tokio::spawn(axum::serve(listener, veil_server::app(state)).into_future());
    let url = format!("http://{address}");
    say(
        out,
        format!("\n[bureau] veil serve --data-dir {d} --listen {address}"),
    )?;
    let bought = buy(&url, key.expose(), product, &root.join("buyer-downloads")).await;
    server.abort();
    let (purchase, files, sources) =
        bought.map_err(|e| Error::internal(format!("the demo's buyer: {e}")))?;
    say(
        out,
        format!(
            "[buyer] veil client offers → {product}\n[buyer] veil client product buy {product} → purchase {} for {}\n[buyer] veil client product download {product} --out ./p → {files} files, signature and digests verified offline against the platform key (sources: {sources})",
            purchase.id,
            Fen(purchase.price_fen)
        ),
    )?;
    Ok(())
}

/// The buyer's side of the sale, over HTTP with the SDK: the purchase, the number of files
/// downloaded and the sources the verified manifest names.
async fn buy(
    url: &str,
    key: &str,
    product: &str,
    downloads: &Path,
) -> std::result::Result<(veil_sdk::api::PurchaseView, usize, String), String> {
    let buyer = veil_sdk::client::Client::new(url, key).map_err(|e| e.to_string())?;
    let offers = buyer.offers().await.map_err(|e| e.to_string())?;
    if !offers.iter().any(|o| o.id == product) {
        return Err(format!("{product} is not among the offers"));
    }
    let purchase = buyer.purchase(product).await.map_err(|e| e.to_string())?;
    let dir: PathBuf = downloads.join(product);
    buyer
        .download_product(product, &dir, |_, _| {})
        .await
        .map_err(|e| e.to_string())?;
    let key = buyer.platform_key().await.map_err(|e| e.to_string())?;
    let public =
        veil_runtime::keys::parse_public(&key.public_key_hex).map_err(|e| e.to_string())?;
    let verified =
        veil_sdk::manifest::verify_product_dir(&dir, Some(&public)).map_err(|e| e.to_string())?;
    let sources = verified
        .manifest
        .sources
        .iter()
        .map(|s| format!("{} acquired {}", s.name, s.acquired_on))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((purchase, verified.manifest.files.len(), sources))
}

/// The wall limit the demo's bureau approves for a WASM template over `rows` records: a unit's
/// deadline is cut so that every unit running to it fits in the wall limit
/// (`mapping::unit_limits`), so a larger table needs a longer limit — about 5 ms of it per
/// record, which leaves each unit over 3 ms, between the default limit and the largest.
fn wasm_wall_seconds(rows: u64) -> u32 {
    let largest = veil_gate::sandbox::JOB_WALL_MS_MAX / 1000;
    let wanted = rows.saturating_mul(5) / 1000;
    u32::try_from(wanted.clamp(u64::from(templates::JOB_WALL_SECONDS_DEFAULT), largest))
        .unwrap_or(templates::JOB_WALL_SECONDS_DEFAULT)
}
