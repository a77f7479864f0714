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
    /// Print JSON instead of text.
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
    /// One dataset: its schema, or (bureau) its data-quality report.
    #[command(subcommand)]
    Dataset(ClientDataset),
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
    /// One offer: its listing card and signed manifest, readable before buying.
    #[command(subcommand)]
    Offer(ClientOffer),
    /// Your purchases (buyer).
    Purchases,
    /// Disputes of purchases: a buyer opens one, the bureau upholds or rejects it.
    #[command(subcommand)]
    Dispute(crate::disputes::ClientDispute),
    /// (bureau) The emergency stop: freeze (`--scope … --reason …`), `lift`, or `list` the
    /// incident log.
    Freeze(crate::freezes::ClientFreeze),
    #[command(flatten)]
    Actions(crate::client_actions::Actions),
    /// Your settlement statement for a month (the bureau names --party), as JSON.
    Statement {
        /// The month, YYYY-MM in bureau time.
        period: String,
        /// (bureau) Whose statement: operator:NAME, provider:NAME or platform.
        #[arg(long)]
        party: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientDataset {
    /// The schema a template's SQL reads: columns with types, roles, bounds and public key
    /// sets, the privacy unit, the acquisition date (bureau; provider: its own; operator: with
    /// a grant in its term). No value from the data.
    Show {
        /// The dataset's id or name.
        id: String,
    },
    /// (bureau) The data-quality report registration stored; it holds in-domain values.
    Quality {
        /// The dataset's id or name.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientOffer {
    /// The listing card of a product on offer — template, purpose, columns and types,
    /// sources with acquisition dates, ε/δ, k, rows, release date, price — from its signed
    /// manifest, whose signature is checked against the platform key first.
    Show {
        /// The product's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientTemplate {
    /// Submit a template file (a WASM template's module is uploaded first).
    Submit {
        /// The template file (TOML); a WASM template's module is read from beside it.
        file: PathBuf,
    },
    /// Show a template: its SQL, parameters, state and approval terms.
    Show {
        /// Template id, unique prefix (at least 8 characters) or name.
        id: String,
    },
    /// Your templates (the bureau: every operator's).
    List,
    /// (bureau) Approve a template: the same terms `veil template approve` takes.
    Approve {
        /// Template id, unique prefix (at least 8 characters) or name.
        id: String,
        #[command(flatten)]
        terms: ApprovalTerms,
        /// Only state what these terms would give (each output column's error at 95 %,
        /// grouping warnings), without approving.
        #[arg(long)]
        preview: bool,
    },
    #[command(flatten)]
    Decision(crate::client_actions::TemplateDecision),
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
        /// Wait for the job to end, and print how it ended.
        #[arg(long)]
        wait: bool,
    },
    /// Would the job pass, and what would it cost? Nothing runs.
    Check {
        #[command(flatten)]
        job: JobArgs,
    },
    /// Show a job: its state, and its product or why it was refused.
    Show {
        /// Job id.
        id: String,
    },
    /// Wait until a job ends, then show it.
    Wait {
        /// Job id.
        id: String,
        /// Longest wait, in seconds.
        #[arg(long, default_value_t = WAIT_SECONDS_DEFAULT)]
        timeout_seconds: u64,
    },
    /// Cancel a job: a queued one spends nothing; a running one keeps its reserved ε spent.
    Cancel {
        /// Job id.
        id: String,
    },
    /// Your jobs (the bureau: every operator's).
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientProduct {
    /// The products you may see (operator: yours; buyer: offered or bought; bureau: all).
    List,
    /// A product's manifest and files.
    Show {
        /// Product id.
        id: String,
    },
    /// Offer a product for sale (its operator, or the bureau).
    Sell {
        /// Product id.
        id: String,
        /// Price in fen.
        #[arg(long)]
        price_fen: i64,
    },
    /// Buy a product (buyer).
    Buy {
        /// Product id.
        id: String,
    },
    /// Download a product into a folder and verify it against the platform's key.
    Download {
        /// Product id.
        id: String,
        /// Folder to download into; the product is verified there.
        #[arg(long)]
        out: PathBuf,
    },
    #[command(flatten)]
    Recall(crate::client_actions::ProductRecall),
}

/// The exit code of a failed client command: the same codes the local commands use (the
/// README's table), so a script handles both alike. A refusal is 3; a server that cannot be
/// reached is 7 and an answer this client cannot read 1, neither a resource limit.
pub(crate) fn exit_code(error: &ClientError) -> i32 {
    match error {
        ClientError::Refused { .. } => 3,
        ClientError::Busy { .. } | ClientError::Timeout(_) => 4,
        ClientError::StorageFull(_) => 6,
        ClientError::Transport(_) => 7,
        ClientError::Server { .. } => 1,
        ClientError::Unauthorized(_)
        | ClientError::Forbidden(_)
        | ClientError::NotFound(_)
        | ClientError::Invalid(_)
        | ClientError::Conflict(_)
        | ClientError::Local(_) => 2,
    }
}

/// A failed client command's message: a refusal lists every rule that refused.
fn error_text(error: &ClientError) -> String {
    match error {
        ClientError::Refused {
            message,
            violations,
        } => {
            let mut text = message.trim_end().to_string();
            if !violations.is_empty() && !text.contains('[') {
                for v in violations {
                    text.push_str(&format!("\n  - [{}] {}", v.rule, v.message));
                }
            }
            text
        }
        other => other.to_string(),
    }
}

/// Runs one client command; returns the exit code. Its errors are printed here, on standard
/// error, with the code [`exit_code`] gives them.
pub(crate) async fn run(args: ClientArgs) -> Result<i32> {
    let (url, token) = crate::profile::connection(args.url, args.token, args.profile.as_deref())?;
    let client = Client::new(&url, &token).map_err(|e| Error::invalid(e.to_string()))?;
    let json = args.json;
    match run_command(&client, json, args.command).await {
        Ok(code) => Ok(code),
        Err(error) => {
            eprintln!("error: {}", error_text(&error));
            Ok(exit_code(&error))
        }
    }
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
        ClientCommand::Dataset(command) => return dataset(client, json, command).await,
        ClientCommand::Offer(ClientOffer::Show { id }) => return offer(client, json, &id).await,
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
        ClientCommand::Actions(command) => {
            return crate::client_actions::run(client, json, command).await;
        }
        ClientCommand::Freeze(command) => {
            return crate::freezes::run_client(client, json, command).await;
        }
        ClientCommand::Dispute(command) => {
            return crate::disputes::run_client(client, json, command).await;
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

/// Most keys of a public key set `veil client dataset show` prints in its table (`--json`
/// lists every key).
const KEYS_SHOWN_MAX: usize = 12;

async fn dataset(
    client: &Client,
    json: bool,
    command: ClientDataset,
) -> std::result::Result<i32, ClientError> {
    match command {
        ClientDataset::Show { id } => {
            let schema = client.dataset(&id).await?;
            if json {
                json_out(&schema)?;
            } else {
                print!("{}", dataset_text(&schema));
                print_table(
                    &["column", "type", "role", "bounds", "public keys"],
                    &schema
                        .columns
                        .iter()
                        .map(|c| {
                            vec![
                                c.name.clone(),
                                c.data_type.clone(),
                                c.role.clone(),
                                c.bounds.as_ref().map_or(String::new(), |b| {
                                    b.iter().map(f64::to_string).collect::<Vec<_>>().join(" – ")
                                }),
                                c.keys.as_ref().map_or(String::new(), |k| keys_text(k)),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        ClientDataset::Quality { id } => {
            let report = client.dataset_quality(&id).await?;
            if json {
                json_out(&report)?;
            } else {
                // The same text as the bureau's local `veil dataset show`.
                let report: veil_runtime::quality::QualityReport =
                    serde_json::from_value(report).map_err(|e| ClientError::Server {
                        status: 200,
                        message: format!("unreadable quality report: {e}"),
                    })?;
                print!("{report}");
            }
        }
    }
    Ok(0)
}

/// The head of `veil client dataset show`: everything but the column table.
fn dataset_text(d: &veil_sdk::api::DatasetSchema) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "dataset `{}` {}", d.name, d.id);
    let _ = writeln!(out, "  provider:        {}", d.provider);
    let _ = writeln!(
        out,
        "  classification:  level {}, sharing {}",
        d.classification_level, d.sharing
    );
    let _ = writeln!(out, "  acquired on:     {}", d.acquired_on);
    let _ = writeln!(
        out,
        "  privacy unit:    {} ({})",
        d.privacy_unit, d.unit_kind
    );
    if let Some(epsilon) = d.epsilon_per_month {
        let _ = writeln!(out, "  dataset budget:  ε {epsilon} per month");
    }
    let _ = writeln!(out, "  rows:            {}", d.rows);
    let _ = writeln!(out, "  registered at:   {}", d.registered_at);
    out
}

/// A public key set for a table cell: every key when there are few, else the first ones.
fn keys_text(keys: &[String]) -> String {
    if keys.len() <= KEYS_SHOWN_MAX {
        return keys.join(", ");
    }
    format!(
        "{}, … ({} keys; --json lists all)",
        keys[..KEYS_SHOWN_MAX].join(", "),
        keys.len()
    )
}

/// `veil client offer show`: the card's manifest is checked against the platform key before
/// anything is printed, and every figure shown but the price and the column types is read
/// from that verified manifest rather than from the card's summary fields.
async fn offer(client: &Client, json: bool, id: &str) -> std::result::Result<i32, ClientError> {
    let card = client.offer(id).await?;
    let key = client.platform_key().await?;
    let public = veil_runtime::keys::parse_public(&key.public_key_hex)
        .map_err(|e| ClientError::Local(e.to_string()))?;
    veil_sdk::manifest::verify_signature(&card.manifest, Some(&public)).map_err(|e| {
        ClientError::Local(format!(
            "the offer's manifest does not verify with the platform key: {e}"
        ))
    })?;
    if json {
        json_out(&card)?;
        return Ok(0);
    }
    print!("{}", offer_text(&card, &key.public_key_hex));
    print_table(
        &["column", "type", "kind"],
        &card
            .manifest
            .manifest
            .columns
            .iter()
            .map(|c| {
                let data_type = card
                    .columns
                    .iter()
                    .find(|t| t.name == c.name)
                    .map_or(String::new(), |t| t.data_type.clone());
                vec![c.name.clone(), data_type, c.kind.clone()]
            })
            .collect::<Vec<_>>(),
    );
    Ok(0)
}

/// The head of `veil client offer show`: everything but the column table.
fn offer_text(card: &veil_sdk::api::OfferCard, platform_key: &str) -> String {
    use std::fmt::Write as _;
    let m = &card.manifest.manifest;
    let mut out = String::new();
    let _ = writeln!(out, "offer {}: {}", m.product_id, Fen(card.price_fen));
    let _ = writeln!(out, "  template:   {} ({})", m.template_name, m.template_id);
    let _ = writeln!(out, "  purpose:    {}", m.purpose);
    let _ = writeln!(out, "  operator:   {}", m.operator);
    let _ = writeln!(out, "  released:   {}", m.created_at);
    let _ = writeln!(out, "  rows:       {}", m.rows);
    let _ = writeln!(
        out,
        "  privacy:    ε {} δ {} k {}, {}",
        m.privacy.epsilon, m.privacy.delta, m.privacy.k, m.privacy.mechanism
    );
    for s in &m.sources {
        let _ = writeln!(
            out,
            "  source:     {} ({}) from {}, acquired {}",
            s.name, s.dataset_id, s.provider, s.acquired_on
        );
    }
    let _ = writeln!(
        out,
        "  manifest:   signature verified with the platform key {platform_key}"
    );
    out
}

async fn template(
    client: &Client,
    json: bool,
    command: ClientTemplate,
) -> std::result::Result<i32, ClientError> {
    let template = match command {
        ClientTemplate::Decision(command) => {
            return crate::client_actions::template(client, json, command).await;
        }
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
        ClientTemplate::Approve { id, terms, preview } => {
            if preview {
                let stated = client.preview_template(&id, &terms.wire()).await?;
                if json {
                    json_out(&stated)?;
                } else {
                    println!("approving with these terms would give:");
                    crate::output::print_accuracy(&stated.accuracy, &stated.warnings);
                }
                return Ok(0);
            }
            let template = client.approve_template(&id, &terms.wire()).await?;
            if !json {
                // What the approved terms give each column; the approval stands either way.
                match client.preview_template(&template.id, &terms.wire()).await {
                    Ok(stated) => crate::output::print_accuracy(&stated.accuracy, &stated.warnings),
                    Err(e) => eprintln!("(the accuracy statement could not be made: {e})"),
                }
            }
            template
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
        ClientProduct::Recall(command) => {
            return crate::client_actions::recall(client, json, command).await;
        }
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
            let verified = match veil_sdk::manifest::verify_product_dir(&out, Some(&public)) {
                Ok(verified) => verified,
                Err(e) => {
                    // Exit 5, as `veil product verify` does for a product that does not verify.
                    eprintln!("error: the download does not verify: {e}");
                    return Ok(5);
                }
            };
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
