//! Correction requests (Shuozhou measures art. 19; 2020 measures art. 8): an operator or a
//! buyer who finds an error in a dataset, or in a product made from one, reports it in words;
//! the dataset's provider (or the bureau for it) answers within
//! [`ANSWER_WORKING_DAYS`] working days — accepted, naming the new version that corrects it,
//! or rejected with a reason — and a request still open after that is flagged overdue.
//! Products made from a version older than an accepted correction are *superseded*: their
//! buyers see it on their purchases.
//!
//! A request carries text only (no attachment is accepted: the API has no field for one), at
//! most [`TEXT_CHARS_MAX`] characters, and concerns exactly one dataset: a request about a
//! product names which of the product's sources it is about when there are several.

use std::collections::HashSet;

use chrono::NaiveDate;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::catalog;
use crate::error::{Error, Result};
use crate::principals::Role;
use crate::store::Store;
use crate::{audit, budget, clock, grants, market, products};

/// Longest request or answer, in characters.
pub const TEXT_CHARS_MAX: usize = 2_000;
/// Working days (Monday to Friday) the provider has to answer (Shuozhou measures art. 19).
pub const ANSWER_WORKING_DAYS: u32 = 10;

/// One correction request and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correction {
    pub id: String,
    /// The principal that filed it, and its role (`operator` or `buyer`).
    pub filed_by: String,
    pub filer_role: String,
    /// `dataset` or `product`.
    pub target_kind: String,
    pub target_id: String,
    /// The dataset the request is about (the target, or the product's source).
    pub dataset_id: String,
    /// The dataset's provider, who answers.
    pub provider: String,
    pub text: String,
    /// `open`, `accepted` or `rejected`.
    pub state: String,
    pub answer: Option<String>,
    /// The version that corrects the error, for an accepted request.
    pub corrected_in_version: Option<u32>,
    pub filed_at: String,
    pub answered_at: Option<String>,
    pub answered_by: Option<String>,
    /// Working days since it was filed, while open.
    pub working_days_waiting: u32,
    /// Open for more than [`ANSWER_WORKING_DAYS`] working days.
    pub overdue: bool,
}

/// What a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Dataset(String),
    /// A product, and (when it has several sources) the dataset among them.
    Product {
        product_id: String,
        dataset: Option<String>,
    },
}

fn checked_text(text: &str, what: &str) -> Result<String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::invalid(format!(
            "the {what} is empty; say in words what is wrong and where"
        )));
    }
    if text.chars().count() > TEXT_CHARS_MAX {
        return Err(Error::invalid(format!(
            "the {what} is longer than {TEXT_CHARS_MAX} characters; shorten it (attachments are not accepted: describe the error in words)"
        )));
    }
    Ok(text.to_string())
}

/// Files a request as `filer` (an operator or a buyer). An operator may ask about a dataset
/// one of its grants covers or a product it made; a buyer about a product it bought. Anything
/// else is reported as not existing, exactly like a missing one.
pub fn file(
    store: &mut Store,
    filer: &str,
    role: Role,
    target: Target,
    text: &str,
) -> Result<Correction> {
    let text = checked_text(text, "request")?;
    let (target_kind, target_id, dataset) = match &target {
        Target::Dataset(name_or_id) => {
            let dataset = catalog::get(store, name_or_id)?;
            let granted = role == Role::Operator
                && grants::list(store)?
                    .iter()
                    .any(|g| g.operator == filer && g.datasets.contains(&dataset.id));
            if !granted {
                return Err(Error::not_found("dataset", name_or_id));
            }
            ("dataset", dataset.id.to_string(), dataset)
        }
        Target::Product {
            product_id,
            dataset,
        } => {
            let product = products::get(store.conn(), &crate::ids::ProductId::new(product_id))
                .map_err(|_| Error::not_found("product", product_id))?;
            let mine = match role {
                Role::Operator => product.operator == filer,
                Role::Buyer => market::purchases_of(store.conn(), filer)?
                    .iter()
                    .any(|p| p.product_id == product.id),
                _ => false,
            };
            if !mine {
                return Err(Error::not_found("product", product_id));
            }
            let sources = budget::datasets_read_by_job(store.conn(), &product.job_id)?;
            let chosen = match (dataset, sources.as_slice()) {
                (None, [only]) => only.clone(),
                (None, _) => {
                    return Err(Error::invalid(format!(
                        "product {product_id} was made from {} datasets; name the one the error is in",
                        sources.len()
                    )));
                }
                (Some(name), _) => {
                    let d = catalog::get(store, name)?;
                    if !sources.iter().any(|s| s == d.id.as_str()) {
                        return Err(Error::invalid(format!(
                            "product {product_id} was not made from `{name}`; name one of its sources"
                        )));
                    }
                    d.id.to_string()
                }
            };
            ("product", product.id.clone(), catalog::get(store, &chosen)?)
        }
    };
    let id = format!(
        "corr-{}",
        &crate::ids::GrantId::random().as_str()[crate::ids::GrantId::PREFIX.len()..]
    );
    let now = clock::format(clock::now());
    store.write(|tx| {
        tx.execute(
            "INSERT INTO corrections (id, filed_by, filer_role, target_kind, target_id, dataset_id,
                provider, text, state, filed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'open', ?9)",
            params![
                id,
                filer,
                role.as_str(),
                target_kind,
                target_id,
                dataset.id.as_str(),
                dataset.policy.provider,
                text,
                now
            ],
        )?;
        audit::append(
            tx,
            filer,
            &id,
            audit::Event::CorrectionFiled {
                target_kind,
                target_id: &target_id,
                dataset_id: dataset.id.as_str(),
            },
        )?;
        Ok(())
    })?;
    get(store, &id)
}

/// The provider's answer (or the bureau's for it): accepted, naming the version that
/// corrects the error — a version registered after the request was filed — or rejected with
/// a reason. A request is answered once.
pub fn answer(
    store: &mut Store,
    actor: &str,
    role: Role,
    id: &str,
    corrected_in_version: Option<u32>,
    reason: &str,
) -> Result<Correction> {
    let reason = checked_text(reason, "answer")?;
    let request = get(store, id)?;
    if role != Role::Bureau && !(role == Role::Provider && request.provider == actor) {
        return Err(Error::not_found("correction request", id));
    }
    if request.state != "open" {
        return Err(Error::Conflict(format!(
            "correction request {id} was already answered ({})",
            request.state
        )));
    }
    if let Some(version) = corrected_in_version {
        let dataset = catalog::get(store, &request.dataset_id)?;
        let versions = catalog::versions(store, &dataset)?;
        let Some(found) = versions.iter().find(|v| v.version == version) else {
            return Err(Error::invalid(format!(
                "`{}` has versions 1 to {}; register the corrected data with `veil dataset update` first, then name its version",
                dataset.name,
                versions.len()
            )));
        };
        if found.registered_at < request.filed_at {
            return Err(Error::invalid(format!(
                "version {version} of `{}` was registered before the request was filed; name the version that corrects it",
                dataset.name
            )));
        }
    }
    let state = if corrected_in_version.is_some() {
        "accepted"
    } else {
        "rejected"
    };
    let now = clock::format(clock::now());
    store.write(|tx| {
        tx.execute(
            "UPDATE corrections SET state = ?1, answer = ?2, corrected_in_version = ?3,
                answered_at = ?4, answered_by = ?5 WHERE id = ?6 AND state = 'open'",
            params![state, reason, corrected_in_version, now, actor, id],
        )?;
        audit::append(
            tx,
            actor,
            id,
            audit::Event::CorrectionAnswered {
                accepted: corrected_in_version.is_some(),
                corrected_in_version,
            },
        )?;
        Ok(())
    })?;
    get(store, id)
}

const COLUMNS: &str = "id, filed_by, filer_role, target_kind, target_id, dataset_id, provider, text, state, answer, corrected_in_version, filed_at, answered_at, answered_by";

fn row_to_correction(row: &rusqlite::Row<'_>) -> rusqlite::Result<Correction> {
    Ok(Correction {
        id: row.get(0)?,
        filed_by: row.get(1)?,
        filer_role: row.get(2)?,
        target_kind: row.get(3)?,
        target_id: row.get(4)?,
        dataset_id: row.get(5)?,
        provider: row.get(6)?,
        text: row.get(7)?,
        state: row.get(8)?,
        answer: row.get(9)?,
        corrected_in_version: row.get(10)?,
        filed_at: row.get(11)?,
        answered_at: row.get(12)?,
        answered_by: row.get(13)?,
        working_days_waiting: 0,
        overdue: false,
    })
}

/// The waiting time and overdue flag of an open request, as of today in bureau time.
fn with_waiting(mut c: Correction, today: NaiveDate) -> Correction {
    if c.state == "open"
        && let Ok(filed) = chrono::DateTime::parse_from_rfc3339(&c.filed_at)
    {
        let filed = filed.with_timezone(&clock::bureau_offset()).date_naive();
        c.working_days_waiting = grants::working_days_between(filed, today);
        c.overdue = c.working_days_waiting > ANSWER_WORKING_DAYS;
    }
    c
}

/// One request, or "does not exist".
pub fn get(store: &Store, id: &str) -> Result<Correction> {
    store
        .conn()
        .query_row(
            &format!("SELECT {COLUMNS} FROM corrections WHERE id = ?1"),
            [id],
            row_to_correction,
        )
        .optional()?
        .map(|c| with_waiting(c, clock::today()))
        .ok_or_else(|| Error::not_found("correction request", id))
}

/// Every request, oldest first.
pub fn list(store: &Store) -> Result<Vec<Correction>> {
    let today = clock::today();
    Ok(crate::store::query_rows(
        store.conn(),
        &format!("SELECT {COLUMNS} FROM corrections ORDER BY filed_at, id"),
        [],
        row_to_correction,
    )?
    .into_iter()
    .map(|c| with_waiting(c, today))
    .collect())
}

/// The products made from a version older than one an accepted correction names: each read
/// a dataset at a version before the correction (its manifest says which).
pub fn superseded_products(store: &Store) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    let accepted: Vec<(String, u32)> = list(store)?
        .into_iter()
        .filter_map(|c| c.corrected_in_version.map(|v| (c.dataset_id, v)))
        .collect();
    for (dataset_id, corrected) in accepted {
        let jobs = budget::jobs_of_dataset(store.conn(), &dataset_id)?;
        for product in products::list(store.conn())? {
            if jobs.binary_search(&product.job_id).is_err() || out.contains(&product.id) {
                continue;
            }
            let dir = store.products_dir().join(&product.id);
            let Ok(signed) = veil_sdk::manifest::read_manifest(&dir) else {
                continue;
            };
            let read = signed
                .manifest
                .sources
                .iter()
                .find(|s| s.dataset_id == dataset_id)
                .map(|s| s.version.unwrap_or(1));
            if read.is_some_and(|v| v < corrected) {
                out.insert(product.id.clone());
            }
        }
    }
    Ok(out)
}
