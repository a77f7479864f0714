//! The emergency stop (2024 measures art. 41-44): the bureau freezes, with a reason, the whole
//! platform, one dataset, one operator or one grant, and lifts the freeze later in a separate
//! audited act. The `freezes` table is also the incident log: every freeze, who imposed it and
//! why, and who lifted it, when and why.
//!
//! While a freeze is active:
//!
//! - no job under it is queued ([`check_job`], called by `jobs::enqueue` inside the transaction
//!   that would queue it) and no queued job under it starts (`jobs::run_queued` checks again
//!   before it reserves ε); the refusal names the rule [`RULE`], the freeze's id and reason;
//! - imposing it cancels the queued jobs under it in the same request ([`freeze`]); the running
//!   ones are the server's to stop ([`jobs_under`] names them: `veil serve` fires their
//!   cancellation tokens at once, and its monitor looks again every few seconds, so a freeze
//!   imposed by another process is seen too). ε a running job reserved stays spent, as for
//!   every cancelled job;
//! - with `block_downloads`, no product it covers may be downloaded by an operator or a buyer
//!   ([`check_product`]).
//!
//! A job is under a freeze when the freeze is the platform's, names the job's operator, the
//! grant it runs (or asked to run) under, or a dataset it reads. A product is under one by the
//! same test on the job that made it.
//!
//! Nothing here holds a data value: scopes, names, ids and the bureau's own words.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{JobId, ProductId};
use crate::jobs::{self, Job, JobState};
use crate::store::{Store, query_parsed_rows, stored_state};
use crate::{audit, budget, catalog, clock, grants, principals, products, templates};

/// The rule a refusal under a freeze names. The gate's rules are the kernel's and this one is
/// the domain's, so it is carried in the refusal's message rather than as a `Rule` variant.
pub const RULE: &str = "platform.frozen";
/// Longest reason the bureau may give when it imposes or lifts a freeze, in bytes.
pub const REASON_BYTES_MAX: usize = 2_000;
/// Prefix of every freeze id.
pub const ID_PREFIX: &str = "frz-";

/// What a freeze covers. Stored in `freezes.scope`, and shown, as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every job, every operator, every product.
    Platform,
    /// Jobs reading the dataset, and products made from it.
    Dataset,
    /// The operator's jobs and products.
    Operator,
    /// Jobs run under the grant, and their products.
    Grant,
}

stored_state!(Scope, "freezes.scope", {
    Platform => "platform",
    Dataset => "dataset",
    Operator => "operator",
    Grant => "grant",
});

impl Scope {
    /// Reads a scope a user typed.
    pub fn parse(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text.trim())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "`{text}` is not a freeze scope; use one of platform, dataset, operator, grant"
                ))
            })
    }
}

/// One freeze, active or lifted: a line of the incident log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub id: String,
    pub scope: Scope,
    /// The dataset id, operator name or grant id frozen; empty for the platform.
    pub target: String,
    pub reason: String,
    /// Downloads of the products it covers are refused too.
    pub block_downloads: bool,
    pub frozen_by: String,
    pub frozen_at: String,
    pub lifted_by: Option<String>,
    pub lifted_at: Option<String>,
    pub lift_reason: Option<String>,
}

impl Freeze {
    /// Not lifted yet.
    pub fn is_active(&self) -> bool {
        self.lifted_at.is_none()
    }

    /// What it covers, in words: "the platform", "dataset ds-…".
    pub fn covers(&self) -> String {
        match self.scope {
            Scope::Platform => "the platform".to_string(),
            scope => format!("{} {}", scope.as_str(), self.target),
        }
    }

    /// The refusal of something the freeze stops, naming [`RULE`], the freeze and its reason,
    /// and what the caller can do.
    pub fn refusal(&self, what: &str) -> Error {
        Error::Conflict(format!(
            "{RULE}: {} is frozen by the bureau (freeze {}: {}); {what} until the bureau lifts it",
            self.covers(),
            self.id,
            self.reason
        ))
    }

    fn applies(&self, operator: &str, grant: Option<&str>, datasets: &[String]) -> bool {
        match self.scope {
            Scope::Platform => true,
            Scope::Operator => self.target == operator,
            Scope::Grant => grant == Some(self.target.as_str()),
            Scope::Dataset => datasets.contains(&self.target),
        }
    }
}

const COLUMNS: &str = "id, scope, target, reason, block_downloads, frozen_by, frozen_at,
    lifted_by, lifted_at, lift_reason";

fn row_to_freeze(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Freeze>> {
    let scope: String = row.get(1)?;
    let (id, target, reason, block_downloads, frozen_by, frozen_at) = (
        row.get(0)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    );
    let (lifted_by, lifted_at, lift_reason) = (row.get(7)?, row.get(8)?, row.get(9)?);
    Ok(Scope::from_stored(&scope).map(|scope| Freeze {
        id,
        scope,
        target,
        reason,
        block_downloads,
        frozen_by,
        frozen_at,
        lifted_by,
        lifted_at,
        lift_reason,
    }))
}

fn checked_reason(reason: &str, flag: &str) -> Result<String> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(Error::invalid(format!(
            "give the reason for the record ({flag}); the incident log shows it"
        )));
    }
    if reason.len() > REASON_BYTES_MAX {
        return Err(Error::invalid(format!(
            "the reason is {} bytes; shorten it to at most {REASON_BYTES_MAX}",
            reason.len()
        )));
    }
    Ok(reason.to_string())
}

/// The stored target of a freeze of `scope` on `target`: a dataset's id (it may be named by
/// name), an operator's name, a grant's id; empty for the platform. Refuses a target that does
/// not exist, saying where to look.
fn resolve_target(store: &Store, scope: Scope, target: &str) -> Result<String> {
    let target = target.trim();
    if scope == Scope::Platform {
        if !target.is_empty() {
            return Err(Error::invalid(
                "a platform freeze covers everything and takes no target; leave --target out",
            ));
        }
        return Ok(String::new());
    }
    if target.is_empty() {
        return Err(Error::invalid(format!(
            "a {} freeze needs the {} to freeze (--target)",
            scope.as_str(),
            scope.as_str()
        )));
    }
    match scope {
        Scope::Platform => Ok(String::new()),
        Scope::Dataset => Ok(catalog::get(store, target)?.id.to_string()),
        Scope::Grant => Ok(grants::get(store, target)?.id.to_string()),
        Scope::Operator => {
            // An operator is known as a principal of that role, or as the holder of a grant
            // (a store used only from the command line has no principals).
            let principal = principals::list(store)?
                .into_iter()
                .any(|p| p.name == target && p.role == principals::Role::Operator);
            let holder = grants::list(store)?.iter().any(|g| g.operator == target);
            if principal || holder {
                Ok(target.to_string())
            } else {
                Err(Error::NotFound {
                    kind: "operator",
                    id: target.to_string(),
                    hint: "; `veil principal list` and `veil grant list` show the operators",
                })
            }
        }
    }
}

fn random_id() -> String {
    let mut bytes = [0u8; 8];
    // The OS random source failing is nothing the bureau can act on; the clock keeps ids
    // unique in practice.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = clock::now()
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .to_le_bytes();
    }
    format!("{ID_PREFIX}{}", hex::encode(bytes))
}

/// Imposes a freeze, and cancels at once the queued jobs under it (as `actor`). Running jobs
/// under it are named by [`jobs_under`] for the server that runs them.
pub fn freeze(
    store: &mut Store,
    actor: &str,
    scope: Scope,
    target: &str,
    reason: &str,
    block_downloads: bool,
) -> Result<Freeze> {
    let reason = checked_reason(reason, "--reason")?;
    let target = resolve_target(store, scope, target)?;
    let id = random_id();
    let now = clock::format(clock::now());
    store.write(|tx| {
        let earlier: Option<String> = tx
            .query_row(
                "SELECT id FROM freezes WHERE scope = ?1 AND target = ?2 AND lifted_at IS NULL",
                params![scope.as_str(), target],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(earlier) = earlier {
            return Err(Error::Conflict(format!(
                "{} is already frozen (freeze {earlier}); lift that freeze first to change it",
                if scope == Scope::Platform {
                    "the platform".to_string()
                } else {
                    format!("{} {target}", scope.as_str())
                }
            )));
        }
        tx.execute(
            "INSERT INTO freezes (id, scope, target, reason, block_downloads, frozen_by, frozen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                id,
                scope.as_str(),
                target,
                reason,
                block_downloads,
                actor,
                now
            ],
        )?;
        audit::append(
            tx,
            actor,
            &id,
            audit::Event::FreezeImposed {
                scope: scope.as_str(),
                target: &target,
                reason: &reason,
                block_downloads,
            },
        )?;
        Ok(())
    })?;
    for (job, _) in jobs_under(store)? {
        if job.state == JobState::Queued {
            jobs::cancel_queued(store, &job.id, actor)?;
        }
    }
    get(store.conn(), &id)
}

/// Lifts an active freeze; a separate act, audited with its own reason.
pub fn lift(store: &mut Store, actor: &str, id: &str, reason: &str) -> Result<Freeze> {
    let reason = checked_reason(reason, "--reason")?;
    let freeze = get(store.conn(), id)?;
    if !freeze.is_active() {
        return Err(Error::Conflict(format!(
            "freeze {id} was already lifted by {} at {}",
            freeze.lifted_by.unwrap_or_default(),
            freeze.lifted_at.unwrap_or_default()
        )));
    }
    let now = clock::format(clock::now());
    store.write(|tx| {
        let changed = tx.execute(
            "UPDATE freezes SET lifted_by = ?1, lifted_at = ?2, lift_reason = ?3
             WHERE id = ?4 AND lifted_at IS NULL",
            params![actor, now, reason, id],
        )?;
        if changed != 1 {
            return Err(Error::Conflict(format!("freeze {id} was lifted meanwhile")));
        }
        audit::append(
            tx,
            actor,
            id,
            audit::Event::FreezeLifted {
                scope: freeze.scope.as_str(),
                target: &freeze.target,
                reason: &reason,
            },
        )
        .map(|_| ())
    })?;
    get(store.conn(), id)
}

/// One freeze, active or lifted.
pub fn get(conn: &rusqlite::Connection, id: &str) -> Result<Freeze> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM freezes WHERE id = ?1"),
        [id],
        row_to_freeze,
    )
    .optional()?
    .transpose()?
    .ok_or_else(|| Error::NotFound {
        kind: "freeze",
        id: id.to_string(),
        hint: "; `veil freeze list` shows the incident log",
    })
}

/// The freezes in force, oldest first.
pub fn active(conn: &rusqlite::Connection) -> Result<Vec<Freeze>> {
    query_parsed_rows(
        conn,
        &format!("SELECT {COLUMNS} FROM freezes WHERE lifted_at IS NULL ORDER BY frozen_at, rowid"),
        [],
        row_to_freeze,
    )
}

/// The incident log: every freeze, active or lifted, newest first.
pub fn incidents(conn: &rusqlite::Connection) -> Result<Vec<Freeze>> {
    query_parsed_rows(
        conn,
        &format!("SELECT {COLUMNS} FROM freezes ORDER BY frozen_at DESC, rowid DESC"),
        [],
        row_to_freeze,
    )
}

/// The active freeze that stops a job of `operator` under `grant` reading `datasets` (ids),
/// if any; the platform's first.
pub fn check_job(
    conn: &rusqlite::Connection,
    operator: &str,
    grant: Option<&str>,
    datasets: &[String],
) -> Result<Option<Freeze>> {
    Ok(active(conn)?
        .into_iter()
        .filter(|f| f.applies(operator, grant, datasets))
        .min_by_key(|f| f.scope != Scope::Platform))
}

/// The active freeze that blocks downloading a product made by `operator` under `grant` from
/// `datasets` (ids), if any: only freezes with `block_downloads` do.
pub fn check_download(
    conn: &rusqlite::Connection,
    operator: &str,
    grant: Option<&str>,
    datasets: &[String],
) -> Result<Option<Freeze>> {
    Ok(active(conn)?
        .into_iter()
        .filter(|f| f.block_downloads && f.applies(operator, grant, datasets))
        .min_by_key(|f| f.scope != Scope::Platform))
}

/// [`check_download`] for a stored product: its operator, and the grant and datasets of the
/// job that made it.
pub fn check_product(store: &Store, product: &ProductId) -> Result<Option<Freeze>> {
    let product = products::get(store.conn(), product)?;
    let job = jobs::get(store, &product.job_id)?;
    let datasets = budget::datasets_read_by_job(store.conn(), &product.job_id)?;
    check_download(
        store.conn(),
        &product.operator,
        job.grant_id.as_deref(),
        &datasets,
    )
}

/// The jobs not yet ended that an active freeze stops, each with the freeze (the platform's
/// first). A running job is judged by the grant and datasets it reserved on; a queued one by
/// the grant it asked for and the datasets its template names.
pub fn jobs_under(store: &Store) -> Result<Vec<(Job, Freeze)>> {
    if active(store.conn())?.is_empty() {
        return Ok(Vec::new());
    }
    let mut under = Vec::new();
    for job in jobs::list(store)? {
        let datasets = match job.state {
            JobState::Running => budget::datasets_read_by_job(store.conn(), job.id.as_str())?,
            JobState::Queued => {
                let template = templates::get(store, &job.template_id)?;
                templates::named_datasets(store, &template.spec)?
                    .into_iter()
                    .map(|d| d.id.to_string())
                    .collect()
            }
            _ => continue,
        };
        let grant = job.grant_id.as_deref().or(job.requested_grant.as_deref());
        if let Some(freeze) = check_job(store.conn(), &job.operator, grant, &datasets)? {
            under.push((job, freeze));
        }
    }
    Ok(under)
}

/// The running jobs an active freeze stops: the ones a server must cancel.
pub fn running_under(store: &Store) -> Result<Vec<JobId>> {
    Ok(jobs_under(store)?
        .into_iter()
        .filter(|(job, _)| job.state == JobState::Running)
        .map(|(job, _)| job.id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freeze(scope: Scope, target: &str) -> Freeze {
        Freeze {
            id: "frz-1".into(),
            scope,
            target: target.into(),
            reason: "drill".into(),
            block_downloads: false,
            frozen_by: "bureau".into(),
            frozen_at: "2026-01-01T00:00:00Z".into(),
            lifted_by: None,
            lifted_at: None,
            lift_reason: None,
        }
    }

    #[test]
    fn a_freeze_applies_to_its_platform_operator_grant_or_dataset_only() {
        let datasets = ["ds-a".to_string()];
        let job = |f: &Freeze| f.applies("op", Some("gr-1"), &datasets);
        assert!(job(&freeze(Scope::Platform, "")));
        assert!(job(&freeze(Scope::Operator, "op")));
        assert!(!job(&freeze(Scope::Operator, "other")));
        assert!(job(&freeze(Scope::Grant, "gr-1")));
        assert!(!job(&freeze(Scope::Grant, "gr-2")));
        assert!(job(&freeze(Scope::Dataset, "ds-a")));
        assert!(!job(&freeze(Scope::Dataset, "ds-b")));
        // A job that has not chosen a grant is not under a grant's freeze by that.
        assert!(!freeze(Scope::Grant, "gr-1").applies("op", None, &datasets));
    }

    #[test]
    fn a_refusal_starts_with_the_rule_and_names_the_freeze_and_its_reason() {
        let message = freeze(Scope::Dataset, "ds-a")
            .refusal("no job under it can be submitted")
            .to_string();
        assert!(
            message.starts_with("platform.frozen: dataset ds-a is frozen"),
            "{message}"
        );
        assert!(
            message.contains("frz-1") && message.contains("drill"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_scope_is_refused_naming_the_ones_there_are() {
        assert_eq!(Scope::parse(" grant ").ok(), Some(Scope::Grant));
        let message = Scope::parse("city")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("`city`") && message.contains("platform, dataset"),
            "{message}"
        );
    }
}
