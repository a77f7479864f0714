//! The bureau's and a provider's `veil client` commands: the decisions the HTTP API offers
//! (grant requests, template rejection and revocation, recall, settlement, key rotation) and
//! the read-only views (the platform key, a provider's usage). Each takes the same flags as its
//! local twin (`veil template reject`, `veil settle`, `veil principal rotate`, …; the shared
//! sets are in `terms`), and prints text for people or, with `--json`, the server's answer.
//!
//! They live apart from `client` only to keep that file's size in check; `client` flattens
//! these enums into its own.

use clap::Subcommand;
use veil_sdk::api::{ApproveGrantRequest, GrantRequestView, TemplateView};
use veil_sdk::client::{Client, ClientError};

use crate::output::{print_json, print_table};
use crate::terms::{KeyExpiry, ReasonArg};
use veil_runtime::ids::Fen;

type Answer = std::result::Result<i32, ClientError>;

/// Top-level `veil client` commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Actions {
    /// One grant request, or (bureau) a decision on it.
    #[command(subcommand)]
    GrantRequest(GrantRequestCommand),
    /// (bureau) Principals' API keys.
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// (bureau) Settle a closed month: the same as `veil settle`, through the server.
    Settle {
        /// The month to settle, YYYY-MM in bureau time; it must have ended.
        #[arg(long)]
        period: String,
    },
    /// (provider) Your datasets' usage: jobs that read them, rows fees and sale shares earned.
    Usage,
    /// The platform's public key (what buyers pin to verify products).
    PlatformKey,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GrantRequestCommand {
    /// One grant request (yours; the bureau sees any).
    Show {
        /// Grant request id.
        id: String,
    },
    /// (bureau) Grant a pending request, optionally with less ε per month than asked for.
    Approve {
        /// Grant request id.
        id: String,
        /// ε per month to grant instead of the amount asked for (at most that amount).
        #[arg(long)]
        epsilon_per_month: Option<f64>,
    },
    /// (bureau) Reject a pending request, telling the operator why.
    Reject {
        /// Grant request id.
        id: String,
        #[command(flatten)]
        reason: ReasonArg,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PrincipalCommand {
    /// Give a principal a new API key, printed once: its old key stops working at once, and
    /// everything it owns stays its own. The same as `veil principal rotate`.
    Rotate {
        /// Principal id or name.
        id: String,
        #[command(flatten)]
        expiry: KeyExpiry,
    },
}

/// `veil client template …` decisions, flattened into `client::ClientTemplate`.
#[derive(Debug, Subcommand)]
pub(crate) enum TemplateDecision {
    /// (bureau) Reject a submitted template: the same as `veil template reject`.
    Reject {
        /// Template id, unique prefix (at least 8 characters) or name.
        id: String,
        #[command(flatten)]
        reason: ReasonArg,
    },
    /// (bureau) Revoke an approved template: the same as `veil template revoke`.
    Revoke {
        /// Template id, unique prefix (at least 8 characters) or name.
        id: String,
        #[command(flatten)]
        reason: ReasonArg,
    },
}

/// `veil client product recall`, flattened into `client::ClientProduct`.
#[derive(Debug, Subcommand)]
pub(crate) enum ProductRecall {
    /// (bureau) Recall a product: no listing, purchase or download works afterwards. The same
    /// as `veil product recall`.
    Recall {
        /// Product id.
        id: String,
        #[command(flatten)]
        reason: ReasonArg,
    },
}

fn json_out<T: serde::Serialize>(value: &T) -> std::result::Result<(), ClientError> {
    print_json(value).map_err(|e| ClientError::Local(e.to_string()))
}

pub(crate) async fn run(client: &Client, json: bool, command: Actions) -> Answer {
    match command {
        Actions::GrantRequest(command) => {
            let request = match command {
                GrantRequestCommand::Show { id } => client.grant_request(&id).await?,
                GrantRequestCommand::Approve {
                    id,
                    epsilon_per_month,
                } => {
                    client
                        .approve_grant_request(&id, &ApproveGrantRequest { epsilon_per_month })
                        .await?
                }
                GrantRequestCommand::Reject { id, reason } => {
                    client.reject_grant_request(&id, &reason.reason).await?
                }
            };
            if json {
                json_out(&request)?;
            } else {
                print_grant_request(&request);
            }
        }
        Actions::Principal(PrincipalCommand::Rotate { id, expiry }) => {
            let rotated = client.rotate_key(&id, expiry.expires_in_days).await?;
            if json {
                json_out(&rotated)?;
            } else {
                println!(
                    "new API key for {} `{}` ({}); the old key no longer works",
                    rotated.role.as_str(),
                    rotated.name,
                    rotated.id
                );
                if let Some(at) = &rotated.key_expires_at {
                    println!("it expires at {at}");
                }
                println!(
                    "API key (shown once; only its hash is stored): {}",
                    rotated.key
                );
            }
        }
        Actions::Settle { period } => {
            let settled = client.settle(&period).await?;
            if json {
                json_out(&settled)?;
            } else {
                print_settlement(&settled);
            }
        }
        Actions::Usage => {
            let usage = client.usage().await?;
            if json {
                json_out(&usage)?;
            } else {
                print_usage(&usage);
            }
        }
        Actions::PlatformKey => {
            let key = client.platform_key().await?;
            if json {
                json_out(&key)?;
            } else {
                println!("{}", key.public_key_hex);
            }
        }
    }
    Ok(0)
}

pub(crate) async fn template(client: &Client, json: bool, command: TemplateDecision) -> Answer {
    let (verb, template) = match command {
        TemplateDecision::Reject { id, reason } => (
            "rejected",
            client.reject_template(&id, &reason.reason).await?,
        ),
        TemplateDecision::Revoke { id, reason } => (
            "revoked",
            client.revoke_template(&id, &reason.reason).await?,
        ),
    };
    print_template(json, verb, &template)
}

pub(crate) async fn recall(client: &Client, json: bool, command: ProductRecall) -> Answer {
    let ProductRecall::Recall { id, reason } = command;
    let recall = client.recall(&id, &reason.reason).await?;
    if json {
        json_out(&recall)?;
        return Ok(0);
    }
    crate::output::print_recall(&recall.product_id, &recall.reason, &recall.buyers);
    Ok(0)
}

fn print_template(json: bool, verb: &str, template: &TemplateView) -> Answer {
    if json {
        json_out(template)?;
    } else {
        println!("{verb} template {} ({})", template.id, template.spec.name);
    }
    Ok(0)
}

fn print_grant_request(r: &GrantRequestView) {
    println!("grant request {} by `{}`: {}", r.id, r.operator, r.state);
    println!("  purpose:   {}", r.request.purpose);
    println!("  datasets:  {}", r.request.datasets.join(", "));
    println!(
        "  term:      {} – {}, ε {} per month",
        r.request.valid_from, r.request.valid_to, r.request.epsilon_per_month
    );
    if let Some(reasons) = &r.reasons {
        println!("  reasons:   {reasons}");
    }
    if let Some(grant) = &r.grant_id {
        println!("  grant:     {grant}");
    }
}

/// The settlement as `veil settle` prints it, from the server's JSON answer.
fn print_settlement(settled: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let fen = |v: &serde_json::Value| v.as_i64().map_or_else(|| text(v), |f| Fen(f).to_string());
    println!(
        "settled {}: debits {} = credits {}",
        text(&settled["period"]),
        fen(&settled["total_debit"]),
        fen(&settled["total_credit"])
    );
    let rows: Vec<Vec<String>> = settled["statements"]
        .as_array()
        .map(|statements| {
            statements
                .iter()
                .map(|f| {
                    vec![
                        text(&f["party"]),
                        text(&f["lines"]),
                        fen(&f["total_debit"]),
                        fen(&f["total_credit"]),
                        fen(&f["net"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(&["party", "lines", "debit", "credit", "net"], &rows);
    println!("each party reads its statement with `veil client statement PERIOD`");
}

/// A provider's usage, one row per dataset, from the server's JSON answer.
fn print_usage(usage: &serde_json::Value) {
    let datasets = usage.as_array().cloned().unwrap_or_default();
    if datasets.is_empty() {
        println!("you have no registered dataset");
        return;
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let fen = |v: &serde_json::Value| v.as_i64().map_or_else(|| text(v), |f| Fen(f).to_string());
    let rows: Vec<Vec<String>> = datasets
        .iter()
        .map(|d| {
            vec![
                text(&d["name"]),
                text(&d["dataset_id"]),
                text(&d["rows"]),
                text(&d["jobs"]),
                fen(&d["rows_fee_earned"]),
                fen(&d["sale_shares_earned"]),
            ]
        })
        .collect();
    print_table(
        &["dataset", "id", "rows", "jobs", "rows fees", "sale shares"],
        &rows,
    );
}
