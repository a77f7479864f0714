//! `veil client …`: the command line's client half. Every command goes through
//! `veil_sdk::client::Client` to a Veil server (`--url`, `--token`, or `VEIL_URL` and
//! `VEIL_TOKEN`), prints tables for people and `--json` for scripts, and shows progress on
//! standard error while it waits for a job or downloads a product.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use veil_sdk::api::{JobView, ProductView};
use veil_sdk::client::{Client, ClientError};

use crate::output::{print_dry_run, print_json, print_table};
use crate::terms::{ApprovalTerms, GrantTerms, JobArgs};
use veil_runtime::error::{Error, Result};
use veil_runtime::ids::Fen;

/// Longest a `--wait` or `job wait` waits unless told otherwise, in seconds.
pub(crate) const WAIT_SECONDS_DEFAULT: u64 = 600;

#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// The server, e.g. http://127.0.0.1:8080 (else VEIL_URL, else url in the --profile file).
    #[arg(long, env = "VEIL_URL")]
    pub url: Option<String>,
    /// Your API key from `veil principal add` (else VEIL_TOKEN, else the --profile file's
    /// token_file).
    #[arg(long, env = "VEIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A TOML client profile: `url` and `token_file` (see the README).
    #[arg(long, env = "VEIL_PROFILE")]
    pub profile: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Who the key belongs to.
    Whoami,
    /// Datasets you may see.
    Datasets,
    /// Your grants.
    Grants,
    /// Apply for a grant (operator): the same terms `veil grant create` takes.
    RequestGrant {
        #[command(flatten)]
        terms: GrantTerms,
    },
    /// Grant requests (yours; the bureau sees all, overdue ones flagged).
    GrantRequests,
    /// Templates.
    #[command(subcommand)]
    Template(ClientTemplate),
    /// Jobs.
    #[command(subcommand)]
    Job(ClientJob),
    /// Your meter records.
    Meter,
    /// Products.
    #[command(subcommand)]
    Product(ClientProduct),
    /// Products offered for sale.
    Offers,
    /// Your purchases (buyer).
    Purchases,
    /// Your settlement statement for a month (the bureau names --party), as JSON.
    Statement {
        period: String,
        #[arg(long)]
        party: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientTemplate {
    /// Submit a template file (a WASM template's module is uploaded first).
    Submit {
        file: PathBuf,
    },
    Show {
        id: String,
    },
    List,
    /// (bureau) Approve a template: the same terms `veil template approve` takes.
    Approve {
        id: String,
        #[command(flatten)]
        terms: ApprovalTerms,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientJob {
    /// Submit a job; with --wait, wait for its end.
    Submit {
        #[command(flatten)]
        job: JobArgs,
        /// Makes a retried submit safe: the same key returns the same job.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Would the job pass, and what would it cost? Nothing runs.
    Check {
        #[command(flatten)]
        job: JobArgs,
    },
    Show {
        id: String,
    },
    Wait {
        id: String,
        #[arg(long, default_value_t = WAIT_SECONDS_DEFAULT)]
        timeout_seconds: u64,
    },
    Cancel {
        id: String,
    },
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientProduct {
    List,
    Show {
        id: String,
    },
    /// Offer a product for sale (its operator, or the bureau).
    Sell {
        id: String,
        #[arg(long)]
        price_fen: i64,
    },
    /// Buy a product (buyer).
    Buy {
        id: String,
    },
    /// Download a product into a folder and verify it against the platform's key.
    Download {
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
}

fn client_error(error: ClientError) -> Error {
    match error {
        ClientError::Refused {
            message,
            violations,
        } => {
            let mut text = message.trim_end().to_string();
            if !violations.is_empty() && !text.contains('[') {
                for v in &violations {
                    text.push_str(&format!("\n  - [{}] {}", v.rule, v.message));
                }
            }
            Error::invalid(text)
        }
        ClientError::Busy { .. } | ClientError::Timeout(_) => Error::Resources(error.to_string()),
        ClientError::StorageFull(message) => Error::StorageFull(message),
        ClientError::Server { .. } | ClientError::Transport(_) => {
            Error::Resources(error.to_string())
        }
        ClientError::NotFound(message) => Error::invalid(message),
        other => Error::invalid(other.to_string()),
    }
}

/// Runs one client command; returns the exit code.
pub(crate) async fn run(args: ClientArgs) -> Result<i32> {
    let (url, token) = crate::profile::connection(args.url, args.token, args.profile.as_deref())?;
    let client = Client::new(&url, &token).map_err(client_error)?;
    let json = args.json;
    run_command(&client, json, args.command)
        .await
        .map_err(client_error)
}

async fn run_command(
    client: &Client,
    json: bool,
    command: ClientCommand,
) -> std::result::Result<i32, ClientError> {
    match command {
        ClientCommand::Whoami => {
            let me = client.me().await?;
            if json {
                json_out(&me)?;
            } else {
                println!("{} ({}, {})", me.name, me.role.as_str(), me.id);
            }
        }
        ClientCommand::Datasets => {
            let datasets = client.datasets().await?;
            if json {
                json_out(&datasets)?;
            } else {
                print_table(
                    &["id", "name", "provider", "rows", "acquired"],
                    &datasets
                        .iter()
                        .map(|d| {
                            vec![
                                d.id.clone(),
                                d.name.clone(),
                                d.provider.clone(),
                                d.rows.to_string(),
                                d.acquired_on.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        ClientCommand::Grants => {
            let grants = client.grants().await?;
            if json {
                json_out(&grants)?;
            } else {
                print_table(
                    &["id", "operator", "purpose", "valid", "ε/month"],
                    &grants
                        .iter()
                        .map(|g| {
                            vec![
                                g.id.clone(),
                                g.operator.clone(),
                                g.purpose.clone(),
                                format!("{} – {}", g.valid_from, g.valid_to),
                                g.epsilon_per_month.to_string(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        ClientCommand::RequestGrant { terms } => {
            let request = client.request_grant(&terms.wire()).await?;
            if json {
                json_out(&request)?;
            } else {
                println!(
                    "grant request {} is pending the bureau's decision",
                    request.id
                );
            }
        }
        ClientCommand::GrantRequests => {
            let requests = client.grant_requests().await?;
            if json {
                json_out(&requests)?;
            } else {
                print_table(
                    &[
                        "id",
                        "operator",
                        "state",
                        "working days",
                        "overdue",
                        "purpose",
                    ],
                    &requests
                        .iter()
                        .map(|r| {
                            vec![
                                r.id.clone(),
                                r.operator.clone(),
                                r.state.clone(),
                                r.working_days_waiting.to_string(),
                                if r.overdue {
                                    "OVERDUE".into()
                                } else {
                                    String::new()
                                },
                                r.request.purpose.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        ClientCommand::Template(command) => return template(client, json, command).await,
        ClientCommand::Job(command) => return job(client, json, command).await,
        ClientCommand::Meter => {
            let records = client.meter().await?;
            if json {
                json_out(&records)?;
            } else {
                print_table(
                    &["job", "state", "rows scanned", "ε", "price"],
                    &records
                        .iter()
                        .map(|m| {
                            vec![
                                m.job_id.clone(),
                                m.end_state.clone(),
                                m.rows_scanned.to_string(),
                                (m.micro_epsilon as f64 / 1e6).to_string(),
                                Fen(m.price_fen).to_string(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        ClientCommand::Product(command) => return product(client, json, command).await,
        ClientCommand::Offers => print_products(json, &client.offers().await?)?,
        ClientCommand::Purchases => {
            let purchases = client.purchases().await?;
            if json {
                json_out(&purchases)?;
            } else {
                print_table(
                    &["purchase", "product", "price", "at", "recalled"],
                    &purchases
                        .iter()
                        .map(|p| {
                            vec![
                                p.id.clone(),
                                p.product_id.clone(),
                                Fen(p.price_fen).to_string(),
                                p.at.clone(),
                                p.recalled.as_ref().map_or("-".to_string(), |r| {
                                    format!("RECALLED {}: {}", r.at, r.reason)
                                }),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        ClientCommand::Statement { period, party } => {
            let statement = match party {
                Some(party) => client.statement_of(&period, &party).await?,
                None => client.statement(&period).await?,
            };
            json_out(&statement)?;
        }
    }
    Ok(0)
}

async fn template(
    client: &Client,
    json: bool,
    command: ClientTemplate,
) -> std::result::Result<i32, ClientError> {
    let template = match command {
        ClientTemplate::Submit { file } => client.submit_template_file(&file).await?,
        ClientTemplate::Show { id } => {
            let template = client.template(&id).await?;
            if json {
                json_out(&template)?;
            } else {
                print!("{}", template_text(&template));
            }
            return Ok(0);
        }
        ClientTemplate::List => {
            let templates = client.templates().await?;
            if json {
                json_out(&templates)?;
            } else {
                print_table(
                    &["id", "name", "operator", "state"],
                    &templates
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.clone(),
                                t.spec.name.clone(),
                                t.operator.clone(),
                                t.state.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
            return Ok(0);
        }
        ClientTemplate::Approve { id, terms } => {
            client.approve_template(&id, &terms.wire()).await?
        }
    };
    if json {
        json_out(&template)?;
    } else {
        println!(
            "template {} ({}): {}",
            template.id, template.spec.name, template.state
        );
        if let Some(reasons) = &template.reasons {
            println!("  reasons: {reasons}");
        }
    }
    Ok(0)
}

/// A template as `veil client template show` prints it: what the operator submitted (the SQL,
/// its parameters, a WASM template's mapper), where it stands, and the terms the bureau pinned.
fn template_text(t: &veil_sdk::api::TemplateView) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "template `{}` {}", t.spec.name, t.id);
    let _ = writeln!(out, "  operator:   {}", t.operator);
    let _ = writeln!(out, "  state:      {}", t.state);
    let _ = writeln!(out, "  submitted:  {}", t.submitted_at);
    if let Some(at) = &t.decided_at {
        let _ = writeln!(out, "  decided:    {at}");
    }
    if let Some(reasons) = &t.reasons {
        let _ = writeln!(out, "  reasons:    {reasons}");
    }
    match &t.approval {
        Some(a) => {
            let _ = writeln!(
                out,
                "  approval:   ε {} δ {} k {} max groups {} max rows {} price {}",
                a.epsilon,
                a.delta,
                a.k,
                a.max_groups,
                a.max_rows,
                Fen(a.price_per_run_fen)
            );
            let _ = writeln!(
                out,
                "  limits:     memory {} MiB, wall {} s",
                a.memory_mib, a.wall_seconds
            );
            if t.spec.wasm.is_some() {
                let _ = writeln!(
                    out,
                    "  per unit:   fuel {}, memory {} MiB",
                    a.wasm_fuel_per_unit, a.wasm_memory_mib
                );
            }
        }
        None => {
            let _ = writeln!(out, "  approval:   none yet");
        }
    }
    for p in &t.spec.params {
        let kind = match p.kind {
            veil_sdk::template::ParamType::Integer => "integer",
            veil_sdk::template::ParamType::Text => "text",
        };
        let allowed = p
            .allowed
            .as_ref()
            .map_or(String::new(), |a| format!(", one of {}", a.join(", ")));
        let _ = writeln!(out, "  param:      :{} ({kind}{allowed})", p.name);
    }
    if let Some(wasm) = &t.spec.wasm {
        let _ = writeln!(out, "  mapper:     module {}", wasm.module_blake3);
        let _ = writeln!(out, "  input sql:  {}", wasm.input_sql.trim());
        for o in &wasm.output {
            let _ = writeln!(out, "  output:     {} ({:?})", o.name, o.kind);
        }
    }
    let _ = writeln!(out, "  sql:");
    for line in t.spec.sql.trim().lines() {
        let _ = writeln!(out, "    {line}");
    }
    out
}

async fn job(
    client: &Client,
    json: bool,
    command: ClientJob,
) -> std::result::Result<i32, ClientError> {
    let job = match command {
        ClientJob::Submit {
            job,
            idempotency_key,
            wait,
        } => {
            let submitted = client
                .submit_job(&job.submit(), idempotency_key.as_deref())
                .await?;
            if submitted.replayed {
                eprintln!("(this idempotency key was used before: showing that job)");
            }
            if wait {
                wait_with_progress(client, &submitted.job.id, WAIT_SECONDS_DEFAULT).await?
            } else {
                submitted.job
            }
        }
        ClientJob::Check { job } => {
            let answer = client.dry_run(&job.submit()).await?;
            if json {
                json_out(&answer)?;
            } else {
                print_dry_run(&answer);
            }
            return Ok(if answer.passes { 0 } else { 3 });
        }
        ClientJob::Show { id } => client.job(&id).await?,
        ClientJob::Wait {
            id,
            timeout_seconds,
        } => wait_with_progress(client, &id, timeout_seconds).await?,
        ClientJob::Cancel { id } => client.cancel_job(&id).await?,
        ClientJob::List => {
            let jobs = client.jobs().await?;
            if json {
                json_out(&jobs)?;
            } else {
                print_table(
                    &["job", "state", "template", "product", "created"],
                    &jobs
                        .iter()
                        .map(|j| {
                            vec![
                                j.id.clone(),
                                j.state.clone(),
                                j.template_id.chars().take(12).collect(),
                                j.product_id.clone().unwrap_or_default(),
                                j.created_at.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
            return Ok(0);
        }
    };
    if json {
        json_out(&job)?;
    } else {
        print_job(&job);
    }
    Ok(match job.state.as_str() {
        "released" | "queued" | "running" => 0,
        "rejected" => 3,
        "failed" if job.failure.as_deref() == Some(veil_runtime::jobs::STORAGE_FULL_REASON) => 6,
        _ => 1,
    })
}

async fn wait_with_progress(
    client: &Client,
    id: &str,
    timeout_seconds: u64,
) -> std::result::Result<JobView, ClientError> {
    let started = std::time::Instant::now();
    let job = client
        .wait_job_with(id, Duration::from_secs(timeout_seconds), |job| {
            eprint!(
                "\r  job {id}: {} ({} s)   ",
                job.state,
                started.elapsed().as_secs()
            );
            let _ = std::io::stderr().flush();
        })
        .await?;
    eprintln!();
    Ok(job)
}

fn print_job(job: &JobView) {
    println!("job {}: {}", job.id, job.state);
    if let Some(product) = &job.product_id {
        println!("  product: {product}");
    }
    if let Some(from) = &job.reused_from {
        println!("  identical to job {from}: its product is returned and nothing was spent");
    }
    for v in &job.violations {
        println!("  - [{}] {}", v.rule, v.message);
    }
    if let Some(failure) = &job.failure {
        println!("  failure: {failure}");
    }
}

async fn product(
    client: &Client,
    json: bool,
    command: ClientProduct,
) -> std::result::Result<i32, ClientError> {
    match command {
        ClientProduct::List => {
            let products = client.products().await?;
            print_products(json, &products)?;
        }
        ClientProduct::Show { id } => print_products(json, &[client.product(&id).await?])?,
        ClientProduct::Sell { id, price_fen } => {
            print_products(json, &[client.list_for_sale(&id, price_fen).await?])?
        }
        ClientProduct::Buy { id } => {
            let purchase = client.purchase(&id).await?;
            if json {
                json_out(&purchase)?;
            } else if purchase.new {
                println!(
                    "bought {} for {} ({})",
                    id,
                    Fen(purchase.price_fen),
                    purchase.id
                );
            } else {
                println!(
                    "you bought {id} already ({}); nothing was charged",
                    purchase.id
                );
            }
        }
        ClientProduct::Download { id, out } => {
            let key = client.platform_key().await?;
            client
                .download_product(&id, &out, |name, p| {
                    match p.total_bytes {
                        Some(total) => eprint!("\r  {name}: {} / {total} bytes   ", p.done_bytes),
                        None => eprint!("\r  {name}: {} bytes   ", p.done_bytes),
                    }
                    let _ = std::io::stderr().flush();
                })
                .await?;
            eprintln!();
            let public = veil_runtime::keys::parse_public(&key.public_key_hex)
                .map_err(|e| ClientError::Local(e.to_string()))?;
            let verified = veil_sdk::manifest::verify_product_dir(&out, Some(&public))
                .map_err(|e| ClientError::Local(format!("the download does not verify: {e}")))?;
            if json {
                json_out(&serde_json::json!({
                    "product_id": id,
                    "dir": out,
                    "verified": true,
                    "files": verified.manifest.files.len(),
                }))?;
            } else {
                println!(
                    "downloaded {id} into {} and verified it against the platform key {}",
                    out.display(),
                    key.public_key_hex
                );
            }
        }
    }
    Ok(0)
}

fn print_products(json: bool, products: &[ProductView]) -> std::result::Result<(), ClientError> {
    if json {
        return json_out(&products);
    }
    print_table(
        &["product", "operator", "rows", "price", "state", "created"],
        &products
            .iter()
            .map(|p| {
                vec![
                    p.id.clone(),
                    p.operator.clone(),
                    p.rows.to_string(),
                    p.price_fen.map(|f| Fen(f).to_string()).unwrap_or_default(),
                    if p.recalled {
                        "recalled".into()
                    } else {
                        String::new()
                    },
                    p.created_at.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(())
}

fn json_out<T: serde::Serialize>(value: &T) -> std::result::Result<(), ClientError> {
    print_json(value).map_err(|e| ClientError::Local(e.to_string()))
}
