//! Correction requests on the command line: `veil correction list` and
//! `veil correction answer` (the bureau, on the store, answering for a provider). Operators,
//! buyers and providers file and answer through the HTTP API (`/v1/corrections`).
//!
//! The store flags are spelled here rather than borrowed from `local`, which dispatches to
//! this module, so the two do not import each other.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::output::{print_json, print_table};
use crate::terms::ReasonArg;
use veil_runtime::corrections;
use veil_runtime::error::{Error, Result};
use veil_runtime::principals::Role;
use veil_runtime::store::Store;

/// The store and `--json`, as every local command takes them.
#[derive(Debug, Args, Clone)]
pub(crate) struct CorrectionStore {
    /// The domain store folder (created by `veil init`).
    #[arg(long, env = "VEIL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `veil correction …` (bureau, on the store).
#[derive(Debug, Subcommand)]
pub(crate) enum CorrectionCommand {
    /// Every correction request, oldest first; open ones with their working days waiting and
    /// the overdue flag (over ten working days).
    List(CorrectionStore),
    /// Answer an open request for its provider: `--version N` accepts it, naming the dataset
    /// version that corrects the error (`veil dataset update` registers it); `--reject`
    /// rejects it. Either way with `--reason`.
    Answer {
        #[command(flatten)]
        store: CorrectionStore,
        /// Request id (`corr-…`).
        id: String,
        /// The dataset version that corrects the error.
        #[arg(long, conflicts_with = "reject")]
        version: Option<u32>,
        /// Reject the request: the data stands.
        #[arg(long)]
        reject: bool,
        #[command(flatten)]
        reason: ReasonArg,
    },
}

pub(crate) fn run(command: CorrectionCommand) -> Result<i32> {
    match command {
        CorrectionCommand::List(store_arg) => {
            let store = Store::open(&store_arg.data_dir)?;
            let all = corrections::list(&store)?;
            if store_arg.json {
                print_json(&all)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = all
                .into_iter()
                .map(|c| {
                    let state = if c.overdue {
                        format!("{} OVERDUE", c.state)
                    } else {
                        c.state.clone()
                    };
                    vec![
                        c.id,
                        state,
                        format!("{} {}", c.target_kind, c.target_id),
                        c.provider,
                        c.filed_by,
                        c.filed_at,
                        c.working_days_waiting.to_string(),
                        c.text,
                    ]
                })
                .collect();
            print_table(
                &[
                    "id", "state", "about", "provider", "filed by", "filed", "days", "text",
                ],
                &rows,
            );
            Ok(0)
        }
        CorrectionCommand::Answer {
            store: store_arg,
            id,
            version,
            reject,
            reason,
        } => {
            if version.is_none() && !reject {
                return Err(Error::invalid(
                    "say how you answer: --version N accepts the request with the version that corrects it, --reject rejects it",
                ));
            }
            let mut store = Store::open(&store_arg.data_dir)?;
            let answered = corrections::answer(
                &mut store,
                "bureau",
                Role::Bureau,
                &id,
                version,
                &reason.reason,
            )?;
            if store_arg.json {
                print_json(&answered)?;
                return Ok(0);
            }
            println!("correction request {} {}", answered.id, answered.state);
            Ok(0)
        }
    }
}
