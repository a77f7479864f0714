//! The audit log: the chain's state (its head and the current signed checkpoint), the latest
//! entries, and the verify action — the same `veil_runtime::audit::verify` that
//! `veil audit verify` runs, its outcome worded as the CLI words it. The API has no route
//! for the log (it is the bureau's own record), so the page reads the store directly.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};

use crate::Console;
use crate::session::{NoFields, Posted, Signed};
use crate::view::{self, Failure, Page};
use veil_runtime::audit::{self, Broken, Checkpoint, Entry, Verified};
use veil_runtime::principals::Role;

/// The navigation link this page sits under.
const NAV: &str = "/console/bureau/audit";
/// Entries the page shows, the latest first.
pub const ENTRIES_SHOWN: u32 = 50;

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/bureau/audit", get(audit_log))
        .route("/bureau/audit/verify", post(verify))
}

/// What a verification found, in the CLI's words.
struct Outcome {
    verified: bool,
    /// `audit log verified: …` or `audit log BROKEN: …`, as `veil audit verify` prints it.
    line: String,
    /// What was cross-checked, for a verified log.
    cross_checked: Option<String>,
}

impl Outcome {
    fn of(result: Result<Verified, Broken>) -> Self {
        match result {
            Ok(v) => {
                let carried = if v.keyed_from > 1 {
                    format!(
                        "; entries before {} were carried over from unkeyed hashes",
                        v.keyed_from
                    )
                } else {
                    String::new()
                };
                Self {
                    verified: true,
                    line: format!(
                        "audit log verified: {} entries, head {}; {} signed checkpoints (the newest at entry {}){carried}",
                        v.entries, v.head_hash, v.checkpoints, v.checkpoint_seq
                    ),
                    cross_checked: Some(format!(
                        "cross-checked: {} products, {} meter records, {} ledger postings, {} statement files",
                        v.products, v.meter_records, v.postings, v.statement_files
                    )),
                }
            }
            Err(broken) => Self {
                verified: false,
                line: format!("audit log BROKEN: {broken}"),
                cross_checked: None,
            },
        }
    }
}

#[derive(Template)]
#[template(path = "bureau/audit.html")]
struct AuditPage {
    page: Page,
    entries_total: i64,
    /// The newest entry, if any: the chain's head.
    head: Option<(i64, String)>,
    checkpoint: Option<Checkpoint>,
    /// Why the current checkpoint could not be read (verify names the problem).
    checkpoint_error: Option<String>,
    entries: Vec<Entry>,
    outcome: Option<Outcome>,
}

async fn audit_log(State(console): State<Arc<Console>>, who: Signed) -> Result<Response, Failure> {
    view::require(&who, "the audit log", Role::Bureau)?;
    audit_page(&console, &who, None).await
}

async fn verify(
    State(console): State<Arc<Console>>,
    posted: Posted<NoFields>,
) -> Result<Response, Failure> {
    let who = posted.who;
    view::require(&who, "verifying the audit log", Role::Bureau)?;
    let outcome = console
        .app
        .stores
        .with(|store| audit::verify(store))
        .await?;
    audit_page(&console, &who, Some(Outcome::of(outcome))).await
}

async fn audit_page(
    console: &Arc<Console>,
    who: &Signed,
    outcome: Option<Outcome>,
) -> Result<Response, Failure> {
    let (entries_total, entries, checkpoint) = console
        .app
        .stores
        .with(|store| {
            let (total, entries) = audit::recent(store.conn(), ENTRIES_SHOWN)?;
            // A checkpoint log that cannot be read is shown as such; verify says why.
            let checkpoint = audit::current_checkpoint(store).map_err(Failure::from);
            Ok((total, entries, checkpoint))
        })
        .await?;
    let (checkpoint, checkpoint_error) = match checkpoint {
        Ok(checkpoint) => (checkpoint, None),
        Err(failure) => (None, Some(failure.parts().1)),
    };
    Ok(view::render(&AuditPage {
        page: Page::new("Audit log 审计日志", who, NAV),
        entries_total,
        head: entries.first().map(|e| (e.seq, e.hash.clone())),
        checkpoint,
        checkpoint_error,
        entries,
        outcome,
    }))
}
