//! The emergency stop on the command line: the bureau's `veil freeze …` on the store, and its
//! twin `veil client freeze …` through a server.
//!
//! `veil freeze --scope S [--target X] --reason R [--block-downloads]` imposes a freeze,
//! `veil freeze lift ID --reason R` lifts one, `veil freeze list` prints the incident log. A
//! freeze imposed on the store cancels its queued jobs at once; a server running on the same
//! store sees it within `veil_server`'s freeze check interval and cancels the running ones.
//!
//! The store flags are spelled here rather than borrowed from `local`, which dispatches to
//! this module, so the two do not import each other.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use veil_sdk::api::{FreezeRequest, FreezeView};
use veil_sdk::client::{Client, ClientError};

use crate::output::{print_json, print_table};
use crate::terms::ReasonArg;
use veil_runtime::error::{Error, Result};
use veil_runtime::freezes::{self, Freeze, Scope};
use veil_runtime::store::Store;

/// Who the incident log names for an act on the store from the command line.
const LOCAL_ACTOR: &str = "bureau";

/// What to freeze, as both `veil freeze` and `veil client freeze` take it.
#[derive(Debug, Args, Clone)]
pub(crate) struct FreezeFlags {
    /// What to freeze: platform, dataset, operator or grant.
    #[arg(long, value_parser = ["platform", "dataset", "operator", "grant"])]
    pub scope: Option<String>,
    /// The dataset (id or name), operator name or grant id; none for the platform.
    #[arg(long)]
    pub target: Option<String>,
    /// Why, for the incident log (required).
    #[arg(long)]
    pub reason: Option<String>,
    /// Also refuse downloads of the products it covers.
    #[arg(long)]
    pub block_downloads: bool,
}

impl FreezeFlags {
    /// The scope and reason, which a freeze needs and a `lift` or `list` does not.
    fn required(&self) -> Result<(String, String)> {
        match (&self.scope, &self.reason) {
            (Some(scope), Some(reason)) => Ok((scope.clone(), reason.clone())),
            (None, _) => Err(Error::invalid(
                "say what to freeze with --scope platform|dataset|operator|grant (or use `lift` or `list`)",
            )),
            (_, None) => Err(Error::invalid(
                "give the reason for the incident log with --reason",
            )),
        }
    }
}

/// `veil freeze …` (bureau, on the store).
#[derive(Debug, Args)]
pub(crate) struct FreezeArgs {
    #[command(subcommand)]
    pub action: Option<FreezeCommand>,
    /// The domain store folder (created by `veil init`).
    #[arg(long, env = "VEIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub flags: FreezeFlags,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The store and `--json`, as every local command takes them.
#[derive(Debug, Args, Clone)]
pub(crate) struct FreezeStore {
    /// The domain store folder (created by `veil init`).
    #[arg(long, env = "VEIL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum FreezeCommand {
    /// Lift an active freeze: a separate act, with its own reason.
    Lift {
        #[command(flatten)]
        store: FreezeStore,
        /// Freeze id (`frz-…`, from `veil freeze list`).
        id: String,
        #[command(flatten)]
        reason: ReasonArg,
    },
    /// The incident log: every freeze, newest first, with who froze and lifted it and why.
    List(FreezeStore),
}

/// `veil client freeze …` (bureau, through the server).
#[derive(Debug, Args)]
pub(crate) struct ClientFreeze {
    #[command(subcommand)]
    pub action: Option<ClientFreezeCommand>,
    #[command(flatten)]
    pub flags: FreezeFlags,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientFreezeCommand {
    /// Lift an active freeze.
    Lift {
        /// Freeze id (`frz-…`).
        id: String,
        #[command(flatten)]
        reason: ReasonArg,
    },
    /// The incident log.
    List,
}

const HEADERS: [&str; 7] = [
    "freeze",
    "covers",
    "state",
    "downloads",
    "frozen",
    "lifted",
    "reasons",
];

#[allow(clippy::too_many_arguments)]
fn row(
    id: &str,
    scope: &str,
    target: &str,
    active: bool,
    block_downloads: bool,
    frozen: (&str, &str),
    lifted: (Option<&str>, Option<&str>),
    reasons: (&str, Option<&str>),
) -> Vec<String> {
    let covers = if target.is_empty() {
        scope.to_string()
    } else {
        format!("{scope} {target}")
    };
    let lifted = match lifted {
        (Some(by), Some(at)) => format!("{at} by {by}"),
        _ => "-".to_string(),
    };
    let reasons = match reasons.1 {
        Some(lift) => format!("{} — lifted: {lift}", reasons.0),
        None => reasons.0.to_string(),
    };
    vec![
        id.to_string(),
        covers,
        if active { "active" } else { "lifted" }.to_string(),
        if block_downloads { "blocked" } else { "open" }.to_string(),
        format!("{} by {}", frozen.1, frozen.0),
        lifted,
        reasons,
    ]
}

fn local_row(f: &Freeze) -> Vec<String> {
    row(
        &f.id,
        f.scope.as_str(),
        &f.target,
        f.is_active(),
        f.block_downloads,
        (&f.frozen_by, &f.frozen_at),
        (f.lifted_by.as_deref(), f.lifted_at.as_deref()),
        (&f.reason, f.lift_reason.as_deref()),
    )
}

fn view_row(f: &FreezeView) -> Vec<String> {
    row(
        &f.id,
        &f.scope,
        &f.target,
        f.active,
        f.block_downloads,
        (&f.frozen_by, &f.frozen_at),
        (f.lifted_by.as_deref(), f.lifted_at.as_deref()),
        (&f.reason, f.lift_reason.as_deref()),
    )
}

fn covers(scope: &str, target: &str) -> String {
    if target.is_empty() {
        "the platform".to_string()
    } else {
        format!("{scope} {target}")
    }
}

fn open(data_dir: Option<PathBuf>) -> Result<Store> {
    match data_dir {
        Some(dir) => Store::open(&dir),
        None => Err(Error::invalid(
            "name the store with --data-dir (or VEIL_DATA_DIR)",
        )),
    }
}

/// Runs `veil freeze …` on the store; returns the exit code.
pub(crate) fn run(args: FreezeArgs) -> Result<i32> {
    match args.action {
        Some(FreezeCommand::List(store)) => {
            let log = freezes::incidents(Store::open(&store.data_dir)?.conn())?;
            if store.json {
                print_json(&log)?;
            } else if log.is_empty() {
                println!("no freeze has been imposed");
            } else {
                print_table(&HEADERS, &log.iter().map(local_row).collect::<Vec<_>>());
            }
            Ok(0)
        }
        Some(FreezeCommand::Lift { store, id, reason }) => {
            let mut opened = Store::open(&store.data_dir)?;
            let freeze = freezes::lift(&mut opened, LOCAL_ACTOR, &id, &reason.reason)?;
            if store.json {
                print_json(&freeze)?;
            } else {
                println!(
                    "lifted freeze {} on {}; jobs may be submitted again",
                    freeze.id,
                    covers(freeze.scope.as_str(), &freeze.target)
                );
            }
            Ok(0)
        }
        None => {
            let (scope, reason) = args.flags.required()?;
            let mut store = open(args.data_dir)?;
            let freeze = freezes::freeze(
                &mut store,
                LOCAL_ACTOR,
                Scope::parse(&scope)?,
                args.flags.target.as_deref().unwrap_or_default(),
                &reason,
                args.flags.block_downloads,
            )?;
            let running = freezes::running_under(&store)?;
            if args.json {
                print_json(&freeze)?;
                return Ok(0);
            }
            println!(
                "froze {} (freeze {}): {}; its queued jobs are cancelled{}",
                covers(freeze.scope.as_str(), &freeze.target),
                freeze.id,
                freeze.reason,
                if freeze.block_downloads {
                    ", and its products cannot be downloaded"
                } else {
                    ""
                }
            );
            if !running.is_empty() {
                println!(
                    "{} running job(s) under it: a server on this store cancels them within seconds",
                    running.len()
                );
            }
            Ok(0)
        }
    }
}

fn json_out<T: serde::Serialize>(value: &T) -> std::result::Result<(), ClientError> {
    print_json(value).map_err(|e| ClientError::Local(e.to_string()))
}

/// Runs `veil client freeze …`; returns the exit code.
pub(crate) async fn run_client(
    client: &Client,
    json: bool,
    command: ClientFreeze,
) -> std::result::Result<i32, ClientError> {
    let freeze = match command.action {
        Some(ClientFreezeCommand::List) => {
            let log = client.freezes().await?;
            if json {
                json_out(&log)?;
            } else {
                print_table(&HEADERS, &log.iter().map(view_row).collect::<Vec<_>>());
            }
            return Ok(0);
        }
        Some(ClientFreezeCommand::Lift { id, reason }) => {
            client.lift_freeze(&id, &reason.reason).await?
        }
        None => {
            let (scope, reason) = command
                .flags
                .required()
                .map_err(|e| ClientError::Local(e.to_string()))?;
            client
                .freeze(&FreezeRequest {
                    scope,
                    target: command.flags.target.clone(),
                    reason,
                    block_downloads: command.flags.block_downloads,
                })
                .await?
        }
    };
    if json {
        json_out(&freeze)?;
    } else if freeze.active {
        println!(
            "froze {} (freeze {}): {}; {} running job(s) cancelled",
            covers(&freeze.scope, &freeze.target),
            freeze.id,
            freeze.reason,
            freeze.cancelled_jobs.len()
        );
    } else {
        println!(
            "lifted freeze {} on {}",
            freeze.id,
            covers(&freeze.scope, &freeze.target)
        );
    }
    Ok(0)
}
