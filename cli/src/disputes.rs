//! Disputes on the command line: the bureau's `veil dispute list|uphold|reject` on the store,
//! and a buyer's `veil client dispute open|list` through the server (the bureau may also
//! decide through `veil client dispute uphold|reject`).
//!
//! The store flags are spelled here rather than borrowed from `local`, which dispatches to
//! this module, so the two do not import each other.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use veil_sdk::api::DisputeView;
use veil_sdk::client::{Client, ClientError};

use crate::output::{print_json, print_table};
use crate::terms::ReasonArg;
use veil_runtime::disputes::{self, Dispute};
use veil_runtime::error::Result;
use veil_runtime::store::Store;

/// The store and `--json`, as every local command takes them.
#[derive(Debug, Args, Clone)]
pub(crate) struct DisputeStore {
    /// The domain store folder (created by `veil init`).
    #[arg(long, env = "VEIL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `veil dispute …` (bureau, on the store).
#[derive(Debug, Subcommand)]
pub(crate) enum DisputeCommand {
    /// Every dispute buyers opened, with the bureau's decisions.
    List(DisputeStore),
    /// Uphold an open dispute: refund the sale with a ledger posting that reverses it.
    Uphold {
        #[command(flatten)]
        store: DisputeStore,
        /// Dispute id (`dsp-…`).
        id: String,
        #[command(flatten)]
        reason: ReasonArg,
    },
    /// Reject an open dispute, telling the buyer why; nothing is refunded.
    Reject {
        #[command(flatten)]
        store: DisputeStore,
        /// Dispute id (`dsp-…`).
        id: String,
        #[command(flatten)]
        reason: ReasonArg,
    },
}

/// `veil client dispute …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ClientDispute {
    /// (buyer) Dispute one of your purchases, named by its product id or purchase id.
    Open {
        /// The product bought, or the purchase id (`pur-…`).
        purchase: String,
        /// What is wrong with it, in words (no attachments).
        #[arg(long)]
        reason: String,
    },
    /// Your disputes (the bureau: every one).
    List,
    /// (bureau) Uphold an open dispute and refund the sale.
    Uphold {
        /// Dispute id (`dsp-…`).
        id: String,
        #[command(flatten)]
        reason: ReasonArg,
    },
    /// (bureau) Reject an open dispute, telling the buyer why.
    Reject {
        /// Dispute id (`dsp-…`).
        id: String,
        #[command(flatten)]
        reason: ReasonArg,
    },
}

const HEADERS: [&str; 6] = ["dispute", "purchase", "buyer", "state", "refund", "reason"];

fn row(
    id: &str,
    purchase: &str,
    buyer: &str,
    state: &str,
    refund: Option<i64>,
    reason: &str,
    decision: Option<&str>,
) -> Vec<String> {
    let reason = match decision {
        Some(decision) => format!("{reason} — decided: {decision}"),
        None => reason.to_string(),
    };
    vec![
        id.to_string(),
        purchase.to_string(),
        buyer.to_string(),
        state.to_string(),
        refund.map_or("-".to_string(), |p| format!("posting {p}")),
        reason,
    ]
}

fn print_decided(id: &str, state: &str, refund: Option<i64>) {
    match refund {
        Some(posting) => {
            println!("dispute {id} is {state}; refund posted as ledger posting {posting}")
        }
        None => println!("dispute {id} is {state}"),
    }
}

/// Runs `veil dispute …` on the store; returns the exit code.
pub(crate) fn run(command: DisputeCommand) -> Result<i32> {
    let (store, decided) = match command {
        DisputeCommand::List(store) => {
            let found = disputes::list(Store::open(&store.data_dir)?.conn())?;
            if store.json {
                print_json(&found)?;
            } else {
                let rows: Vec<Vec<String>> = found
                    .iter()
                    .map(|d| {
                        row(
                            &d.id,
                            &d.purchase_id,
                            &d.buyer,
                            d.state.as_str(),
                            d.refund_posting_id,
                            &d.reason,
                            d.decision_reason.as_deref(),
                        )
                    })
                    .collect();
                print_table(&HEADERS, &rows);
            }
            return Ok(0);
        }
        DisputeCommand::Uphold { store, id, reason } => {
            let mut opened = Store::open(&store.data_dir)?;
            let decided = disputes::uphold(&mut opened, "bureau", &id, &reason.reason)?;
            (store, decided)
        }
        DisputeCommand::Reject { store, id, reason } => {
            let mut opened = Store::open(&store.data_dir)?;
            let decided = disputes::reject(&mut opened, "bureau", &id, &reason.reason)?;
            (store, decided)
        }
    };
    print_decision(store.json, &decided)?;
    Ok(0)
}

fn print_decision(json: bool, dispute: &Dispute) -> Result<()> {
    if json {
        return print_json(dispute);
    }
    print_decided(
        &dispute.id,
        dispute.state.as_str(),
        dispute.refund_posting_id,
    );
    Ok(())
}

fn json_out<T: serde::Serialize>(value: &T) -> std::result::Result<(), ClientError> {
    print_json(value).map_err(|e| ClientError::Local(e.to_string()))
}

/// Runs `veil client dispute …`; returns the exit code.
pub(crate) async fn run_client(
    client: &Client,
    json: bool,
    command: ClientDispute,
) -> std::result::Result<i32, ClientError> {
    let one: DisputeView = match command {
        ClientDispute::List => {
            let found = client.disputes().await?;
            if json {
                json_out(&found)?;
            } else {
                let rows: Vec<Vec<String>> = found
                    .iter()
                    .map(|d| {
                        row(
                            &d.id,
                            &d.purchase_id,
                            &d.buyer,
                            &d.state,
                            d.refund_posting_id,
                            &d.reason,
                            d.decision_reason.as_deref(),
                        )
                    })
                    .collect();
                print_table(&HEADERS, &rows);
            }
            return Ok(0);
        }
        ClientDispute::Open { purchase, reason } => {
            let opened = client.open_dispute(&purchase, &reason).await?;
            if !json {
                println!(
                    "dispute {} opened on purchase {}; the bureau will uphold or reject it",
                    opened.id, opened.purchase_id
                );
                return Ok(0);
            }
            opened
        }
        ClientDispute::Uphold { id, reason } => client.uphold_dispute(&id, &reason.reason).await?,
        ClientDispute::Reject { id, reason } => client.reject_dispute(&id, &reason.reason).await?,
    };
    if json {
        json_out(&one)?;
    } else {
        print_decided(&one.id, &one.state, one.refund_posting_id);
    }
    Ok(0)
}
