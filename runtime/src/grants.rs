//! Authorizations (grants): which operator may run jobs on which datasets, for what purpose,
//! for how long, with how much privacy budget per month, and what happens after the term
//! (order 266 art. 12: scope, degree, term, disposition). Outside its term or scope nothing runs.

use chrono::NaiveDate;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::catalog::{self, Sharing};
use crate::error::{Error, Result};
use crate::ids::{DatasetId, GrantId};
use crate::store::{Store, query_parsed_rows, stored_state};
use crate::{audit, clock};

/// Largest ε a grant may give per month. Beyond this, "privacy" means little.
pub const GRANT_EPSILON_PER_MONTH_MAX: f64 = 100.0;
/// Longest grant term, in days (five years).
pub const GRANT_TERM_DAYS_MAX: i64 = 5 * 366;

/// ε and δ are accounted in integer millionths and trillionths, so sums never drift.
pub use veil_gate::terms::{MicroEpsilon, PicoDelta};

/// What happens to the operator's derived data when the grant ends (到期处置).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Disposition {
    /// Products derived under the grant are withdrawn from sale and deleted.
    Destroy,
    /// Products stay, no new jobs run.
    Archive,
    /// Products are handed back to the bureau.
    Return,
}

impl Disposition {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "destroy" => Ok(Self::Destroy),
            "archive" => Ok(Self::Archive),
            "return" => Ok(Self::Return),
            _ => Err(Error::invalid(format!(
                "disposition `{text}` is unknown; use destroy, archive or return"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Destroy => "destroy",
            Self::Archive => "archive",
            Self::Return => "return",
        }
    }
}

/// Who owns the products derived under a grant (Order 266 art. 12: ownership of derived
/// data), stated by the grant and printed in every manifest made under it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ownership {
    /// The operator that made them (the default).
    #[default]
    Operator,
    /// The bureau, on behalf of the public.
    Bureau,
    /// The operator and the bureau together.
    Shared,
}

impl Ownership {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "operator" => Ok(Self::Operator),
            "bureau" => Ok(Self::Bureau),
            "shared" => Ok(Self::Shared),
            _ => Err(Error::invalid(format!(
                "ownership `{text}` is unknown; use operator, bureau or shared"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Bureau => "bureau",
            Self::Shared => "shared",
        }
    }
}

/// What the bureau asks for when creating a grant.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    pub operator: String,
    pub datasets: Vec<String>,
    pub purpose: String,
    pub valid_from: NaiveDate,
    pub valid_to: NaiveDate,
    pub epsilon_per_month: f64,
    pub delta_per_month: f64,
    pub disposition: Disposition,
    pub ownership: Ownership,
}

/// A stored grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub id: GrantId,
    pub operator: String,
    pub datasets: Vec<DatasetId>,
    pub purpose: String,
    pub valid_from: NaiveDate,
    pub valid_to: NaiveDate,
    pub micro_epsilon_per_month: MicroEpsilon,
    pub pico_delta_per_month: PicoDelta,
    pub disposition: Disposition,
    pub ownership: Ownership,
    pub created_at: String,
    /// When its disposition ran after the term ([`dispose_expired`]); `None` before.
    pub disposed_at: Option<String>,
}

impl Grant {
    pub fn is_in_term(&self, today: NaiveDate) -> bool {
        self.valid_from <= today && today <= self.valid_to
    }
}

/// Converts a user's ε to integer millionths, refusing values that are not positive and
/// finite; `what` names the flag or field the user gave it in.
pub fn to_micro(epsilon: f64, what: &str) -> Result<MicroEpsilon> {
    MicroEpsilon::from_epsilon(epsilon).map_err(|e| Error::invalid(e.message(what)))
}

/// Converts a user's δ to integer trillionths; δ must be in [0, 1).
pub fn to_pico(delta: f64, what: &str) -> Result<PicoDelta> {
    PicoDelta::from_delta(delta).map_err(|e| Error::invalid(e.message(what)))
}

/// Converts a grant's δ per month, refusing 0: every run spends δ > 0 (the existence
/// threshold's), so a grant without δ would be one under which no job can run.
fn grant_delta(delta: f64, what: &str) -> Result<PicoDelta> {
    let pico = to_pico(delta, what)?;
    if pico.0 == 0 {
        return Err(Error::invalid(format!(
            "{what} is 0, so no job could run under the grant: every run spends some δ for its existence threshold; give at least the δ of the runs it should allow (e.g. 1e-5 for ten runs at δ 1e-6)"
        )));
    }
    Ok(pico)
}

/// Checks a grant request and stores it, with an audit entry.
pub fn create(store: &mut Store, request: GrantRequest) -> Result<Grant> {
    validate(store, &request)?;
    let micro_epsilon = to_micro(request.epsilon_per_month, "--epsilon-per-month")?;
    let pico_delta = grant_delta(request.delta_per_month, "--delta-per-month")?;
    let mut datasets = Vec::new();
    for name in &request.datasets {
        let dataset = catalog::get(store, name)?;
        if !datasets.contains(&dataset.id) {
            datasets.push(dataset.id);
        }
    }

    let grant = Grant {
        id: GrantId::random(),
        operator: request.operator.trim().to_string(),
        datasets,
        purpose: request.purpose.trim().to_string(),
        valid_from: request.valid_from,
        valid_to: request.valid_to,
        micro_epsilon_per_month: micro_epsilon,
        pico_delta_per_month: pico_delta,
        disposition: request.disposition,
        ownership: request.ownership,
        created_at: clock::format(clock::now()),
        disposed_at: None,
    };
    let datasets_json = serde_json::to_string(&grant.datasets)
        .map_err(|e| Error::internal(format!("encoding a grant: {e}")))?;
    store.write(|tx| {
        tx.execute(
            "INSERT INTO grants (id, operator, datasets_json, purpose, valid_from, valid_to,
                micro_epsilon_per_period, pico_delta_per_period, disposition, created_at, ownership)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                grant.id.as_str(),
                grant.operator,
                datasets_json,
                grant.purpose,
                grant.valid_from.to_string(),
                grant.valid_to.to_string(),
                grant.micro_epsilon_per_month.0,
                grant.pico_delta_per_month.0,
                grant.disposition.as_str(),
                grant.created_at,
                grant.ownership.as_str()
            ],
        )?;
        audit::append(
            tx,
            "bureau",
            grant.id.as_str(),
            audit::Event::GrantCreated {
                operator: &grant.operator,
                datasets: &grant.datasets,
                purpose: &grant.purpose,
                valid_from: grant.valid_from,
                valid_to: grant.valid_to,
                epsilon_per_month: grant.micro_epsilon_per_month.epsilon(),
                delta_per_month: grant.pico_delta_per_month.delta(),
                disposition: grant.disposition.as_str(),
                ownership: grant.ownership.as_str(),
            },
        )?;
        Ok(())
    })?;
    Ok(grant)
}

const COLUMNS: &str = "id, operator, datasets_json, purpose, valid_from, valid_to,
    micro_epsilon_per_period, pico_delta_per_period, disposition, created_at, ownership,
    (SELECT at FROM grant_dispositions WHERE grant_dispositions.grant_id = grants.id)";

fn row_to_grant(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Grant>> {
    let datasets_json: String = row.get(2)?;
    let from: String = row.get(4)?;
    let to: String = row.get(5)?;
    let disposition: String = row.get(8)?;
    let parsed = (|| -> Result<Grant> {
        Ok(Grant {
            id: GrantId::new(row.get::<_, String>(0).map_err(Error::from)?),
            operator: row.get(1).map_err(Error::from)?,
            datasets: serde_json::from_str(&datasets_json)
                .map_err(|e| Error::internal(format!("reading a grant: {e}")))?,
            purpose: row.get(3).map_err(Error::from)?,
            valid_from: from
                .parse()
                .map_err(|_| Error::internal("reading a grant's term"))?,
            valid_to: to
                .parse()
                .map_err(|_| Error::internal("reading a grant's term"))?,
            micro_epsilon_per_month: MicroEpsilon(row.get(6).map_err(Error::from)?),
            pico_delta_per_month: PicoDelta(row.get(7).map_err(Error::from)?),
            disposition: Disposition::parse(&disposition)?,
            created_at: row.get(9).map_err(Error::from)?,
            ownership: Ownership::parse(&row.get::<_, String>(10).map_err(Error::from)?)?,
            disposed_at: row.get(11).map_err(Error::from)?,
        })
    })();
    Ok(parsed)
}

pub fn get(store: &Store, id: &str) -> Result<Grant> {
    store
        .conn()
        .query_row(
            &format!("SELECT {COLUMNS} FROM grants WHERE id = ?1"),
            [id],
            row_to_grant,
        )
        .optional()?
        .transpose()?
        .ok_or_else(|| Error::NotFound {
            kind: "grant",
            id: id.to_string(),
            hint: "; `veil grant list` shows the grants",
        })
}

pub fn list(store: &Store) -> Result<Vec<Grant>> {
    query_parsed_rows(
        store.conn(),
        &format!("SELECT {COLUMNS} FROM grants ORDER BY created_at, id"),
        [],
        row_to_grant,
    )
}

/// One grant whose disposition ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disposed {
    pub grant_id: String,
    pub disposition: String,
    /// The products it applied to.
    pub products: Vec<String>,
}

/// Runs the disposition of every grant whose term has ended (its last day is before today in
/// bureau time), once per grant: `destroy` takes its products off sale and deletes their
/// result files (manifests, purchases and ledger lines stay), `archive` takes them off sale
/// for good (buyers keep what they bought), `return` hands them to the bureau (only the
/// bureau may sell them; the operator no longer downloads them). Idempotent: a grant
/// disposed of before is left alone, and the files of destroyed products are deleted again
/// if an earlier run was interrupted after its transaction. Called at the start of
/// `veil serve`, by its periodic sweep, and by `veil grant dispose`.
pub fn dispose_expired(store: &mut Store) -> Result<Vec<Disposed>> {
    let today = clock::today();
    let due: Vec<Grant> = list(store)?
        .into_iter()
        .filter(|g| g.valid_to < today && g.disposed_at.is_none())
        .collect();
    let mut done = Vec::new();
    for grant in due {
        let products = crate::jobs::products_of_grant(store.conn(), grant.id.as_str())?;
        let state = match grant.disposition {
            Disposition::Destroy => "destroyed",
            Disposition::Archive => "archived",
            Disposition::Return => "returned",
        };
        let now = clock::format(clock::now());
        store.write(|tx| {
            let fresh = tx.execute(
                "INSERT OR IGNORE INTO grant_dispositions (grant_id, disposition, products, at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    grant.id.as_str(),
                    grant.disposition.as_str(),
                    products.len() as i64,
                    now
                ],
            )?;
            // Another process ran it meanwhile: its run stands.
            if fresh == 0 {
                return Ok(());
            }
            for product in &products {
                crate::products::set_state(tx, product, state, grant.id.as_str(), &now)?;
                if grant.disposition != Disposition::Return {
                    crate::market::withdraw(tx, product)?;
                }
            }
            audit::append(
                tx,
                "bureau",
                grant.id.as_str(),
                audit::Event::GrantDisposed {
                    disposition: grant.disposition.as_str(),
                    products: &products,
                },
            )?;
            Ok(())
        })?;
        done.push(Disposed {
            grant_id: grant.id.to_string(),
            disposition: grant.disposition.as_str().to_string(),
            products,
        });
    }
    // The files go after the transactions, so a crash between leaves files of a product the
    // store calls destroyed — which this loop deletes on the next run — never the reverse.
    for product in crate::products::in_state(store.conn(), "destroyed")? {
        crate::products::remove_data_files(&store.products_dir().join(&product))?;
    }
    Ok(done)
}

/// Working days a grant request may wait for the bureau before it is flagged as overdue
/// (seed 003, art. 16: the bureau answers an application within five working days).
pub const APPLICATION_WORKING_DAYS_MAX: u32 = 5;
/// Longest reason a bureau may give when it rejects a request, in bytes.
pub const REASON_BYTES_MAX: usize = 2_000;

/// Where an application for a grant stands. Stored in `grant_requests.state`, and serialized,
/// as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplicationState {
    /// Waiting for the bureau's answer.
    Pending,
    /// The bureau granted it; the application names the grant.
    Approved,
    /// The bureau refused it, with its reasons.
    Rejected,
}

stored_state!(ApplicationState, "grant_requests.state", {
    Pending => "pending",
    Approved => "approved",
    Rejected => "rejected",
});

/// An operator's application for a grant (seed 003, art. 16), and the bureau's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Application {
    pub id: String,
    pub operator: String,
    /// Dataset names or ids as the operator asked for them.
    pub datasets: Vec<String>,
    pub purpose: String,
    pub valid_from: NaiveDate,
    pub valid_to: NaiveDate,
    pub micro_epsilon_per_month: MicroEpsilon,
    pub pico_delta_per_month: PicoDelta,
    pub disposition: Disposition,
    pub ownership: Ownership,
    pub state: ApplicationState,
    pub reasons: Option<String>,
    pub grant_id: Option<String>,
    pub submitted_at: String,
    pub decided_at: Option<String>,
}

impl Application {
    /// Working days (Monday to Friday) from the day it was submitted to `today`, in the
    /// bureau's time zone. Public holidays are not modelled: the flag errs towards early.
    pub fn working_days_waiting(&self, today: NaiveDate) -> u32 {
        let submitted = chrono::DateTime::parse_from_rfc3339(&self.submitted_at)
            .map(|t| t.with_timezone(&clock::bureau_offset()).date_naive())
            .unwrap_or(today);
        working_days_between(submitted, today)
    }

    /// A pending request older than [`APPLICATION_WORKING_DAYS_MAX`] working days.
    pub fn is_overdue(&self, today: NaiveDate) -> bool {
        self.state == ApplicationState::Pending
            && self.working_days_waiting(today) > APPLICATION_WORKING_DAYS_MAX
    }
}

/// Working days after `from` up to and including `to` (0 when `to` is not after `from`).
pub fn working_days_between(from: NaiveDate, to: NaiveDate) -> u32 {
    use chrono::Datelike;
    let mut days = 0;
    let mut day = from;
    while day < to {
        day = day.succ_opt().unwrap_or(to);
        if day.weekday().number_from_monday() <= 5 {
            days += 1;
        }
    }
    days
}

/// Records an operator's application. Everything `create` would check is checked now, so the
/// bureau only ever sees requests it could approve as they stand.
pub fn apply(store: &mut Store, request: GrantRequest) -> Result<Application> {
    validate(store, &request)?;
    let application = Application {
        id: format!(
            "greq-{}",
            &GrantId::random().as_str()[GrantId::PREFIX.len()..]
        ),
        operator: request.operator.trim().to_string(),
        datasets: request.datasets.clone(),
        purpose: request.purpose.trim().to_string(),
        valid_from: request.valid_from,
        valid_to: request.valid_to,
        micro_epsilon_per_month: to_micro(request.epsilon_per_month, "epsilon_per_month")?,
        pico_delta_per_month: grant_delta(request.delta_per_month, "delta_per_month")?,
        disposition: request.disposition,
        ownership: request.ownership,
        state: ApplicationState::Pending,
        reasons: None,
        grant_id: None,
        submitted_at: clock::format(clock::now()),
        decided_at: None,
    };
    let datasets_json = serde_json::to_string(&application.datasets)
        .map_err(|e| Error::internal(format!("encoding a grant request: {e}")))?;
    store.write(|tx| {
        tx.execute(
            "INSERT INTO grant_requests (id, operator, datasets_json, purpose, valid_from, valid_to,
                micro_epsilon_per_period, pico_delta_per_period, disposition, state, submitted_at,
                ownership)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                application.id,
                application.operator,
                datasets_json,
                application.purpose,
                application.valid_from.to_string(),
                application.valid_to.to_string(),
                application.micro_epsilon_per_month.0,
                application.pico_delta_per_month.0,
                application.disposition.as_str(),
                application.state,
                application.submitted_at,
                application.ownership.as_str()
            ],
        )?;
        audit::append(
            tx,
            &application.operator,
            &application.id,
            audit::Event::GrantRequested {
                datasets: &application.datasets,
                purpose: &application.purpose,
                epsilon_per_month: application.micro_epsilon_per_month.epsilon(),
            },
        )?;
        Ok(())
    })?;
    Ok(application)
}

/// Everything about a request that can be wrong, checked before anything is stored.
fn validate(store: &Store, request: &GrantRequest) -> Result<()> {
    if request.operator.trim().is_empty() {
        return Err(Error::invalid("name the operator the grant is for"));
    }
    if request.purpose.trim().is_empty() {
        return Err(Error::invalid(
            "state the grant's purpose; data may be used only for it (seed 003 art. 29)",
        ));
    }
    if request.datasets.is_empty() {
        return Err(Error::invalid("a grant covers at least one dataset"));
    }
    if request.valid_from > request.valid_to {
        return Err(Error::invalid(format!(
            "the term starts {} after it ends {}; swap valid_from and valid_to",
            request.valid_from, request.valid_to
        )));
    }
    if (request.valid_to - request.valid_from).num_days() > GRANT_TERM_DAYS_MAX {
        return Err(Error::invalid(format!(
            "a grant's term is at most {GRANT_TERM_DAYS_MAX} days; shorten it and renew later"
        )));
    }
    if request.epsilon_per_month > GRANT_EPSILON_PER_MONTH_MAX {
        return Err(Error::invalid(format!(
            "epsilon_per_month is at most {GRANT_EPSILON_PER_MONTH_MAX}"
        )));
    }
    to_micro(request.epsilon_per_month, "epsilon_per_month")?;
    grant_delta(request.delta_per_month, "delta_per_month")?;
    for name in &request.datasets {
        let dataset = catalog::get(store, name)?;
        if dataset.policy.sharing == Sharing::None {
            return Err(Error::invalid(format!(
                "dataset `{}` has sharing attribute `none` (不予共享) and cannot be granted",
                dataset.name
            )));
        }
    }
    Ok(())
}

const APPLICATION_COLUMNS: &str = "id, operator, datasets_json, purpose, valid_from, valid_to,
    micro_epsilon_per_period, pico_delta_per_period, disposition, state, reasons, grant_id,
    submitted_at, decided_at, ownership";

fn row_to_application(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Application>> {
    let datasets_json: String = row.get(2)?;
    let from: String = row.get(4)?;
    let to: String = row.get(5)?;
    let disposition: String = row.get(8)?;
    let state: String = row.get(9)?;
    let parsed = (|| -> Result<Application> {
        Ok(Application {
            id: row.get(0).map_err(Error::from)?,
            operator: row.get(1).map_err(Error::from)?,
            datasets: serde_json::from_str(&datasets_json)
                .map_err(|e| Error::internal(format!("reading a grant request: {e}")))?,
            purpose: row.get(3).map_err(Error::from)?,
            valid_from: from
                .parse()
                .map_err(|_| Error::internal("reading a grant request's term"))?,
            valid_to: to
                .parse()
                .map_err(|_| Error::internal("reading a grant request's term"))?,
            micro_epsilon_per_month: MicroEpsilon(row.get(6).map_err(Error::from)?),
            pico_delta_per_month: PicoDelta(row.get(7).map_err(Error::from)?),
            disposition: Disposition::parse(&disposition)?,
            ownership: Ownership::parse(&row.get::<_, String>(14).map_err(Error::from)?)?,
            state: ApplicationState::from_stored(&state)?,
            reasons: row.get(10).map_err(Error::from)?,
            grant_id: row.get(11).map_err(Error::from)?,
            submitted_at: row.get(12).map_err(Error::from)?,
            decided_at: row.get(13).map_err(Error::from)?,
        })
    })();
    Ok(parsed)
}

pub fn application(store: &Store, id: &str) -> Result<Application> {
    store
        .conn()
        .query_row(
            &format!("SELECT {APPLICATION_COLUMNS} FROM grant_requests WHERE id = ?1"),
            [id],
            row_to_application,
        )
        .optional()?
        .transpose()?
        .ok_or_else(|| Error::NotFound {
            kind: "grant request",
            id: id.to_string(),
            hint: "",
        })
}

/// Every application, oldest first.
pub fn applications(store: &Store) -> Result<Vec<Application>> {
    query_parsed_rows(
        store.conn(),
        &format!("SELECT {APPLICATION_COLUMNS} FROM grant_requests ORDER BY submitted_at, id"),
        [],
        row_to_application,
    )
}

/// The bureau approves a pending application: the grant is created as asked (or with a lower
/// monthly ε), and the application points to it.
pub fn approve_application(
    store: &mut Store,
    id: &str,
    actor: &str,
    epsilon_per_month: Option<f64>,
) -> Result<(Application, Grant)> {
    let application = application(store, id)?;
    if application.state != ApplicationState::Pending {
        return Err(Error::Conflict(format!(
            "grant request {id} is already {}",
            application.state
        )));
    }
    let asked = application.micro_epsilon_per_month.epsilon();
    let epsilon = epsilon_per_month.unwrap_or(asked);
    if epsilon > asked {
        return Err(Error::invalid(format!(
            "the operator asked for ε {asked} per month; the bureau may grant less, not more"
        )));
    }
    let grant = create(
        store,
        GrantRequest {
            operator: application.operator.clone(),
            datasets: application.datasets.clone(),
            purpose: application.purpose.clone(),
            valid_from: application.valid_from,
            valid_to: application.valid_to,
            epsilon_per_month: epsilon,
            delta_per_month: application.pico_delta_per_month.delta(),
            disposition: application.disposition,
            ownership: application.ownership,
        },
    )?;
    decide(
        store,
        id,
        actor,
        ApplicationState::Approved,
        None,
        Some(grant.id.as_str()),
    )?;
    Ok((self::application(store, id)?, grant))
}

/// The bureau rejects a pending application, with its reasons.
pub fn reject_application(
    store: &mut Store,
    id: &str,
    actor: &str,
    reason: &str,
) -> Result<Application> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > REASON_BYTES_MAX {
        return Err(Error::invalid(format!(
            "give the operator a reason of 1–{REASON_BYTES_MAX} bytes"
        )));
    }
    decide(
        store,
        id,
        actor,
        ApplicationState::Rejected,
        Some(reason),
        None,
    )?;
    application(store, id)
}

fn decide(
    store: &mut Store,
    id: &str,
    actor: &str,
    state: ApplicationState,
    reason: Option<&str>,
    grant: Option<&str>,
) -> Result<()> {
    let now = clock::format(clock::now());
    store.write(|tx| {
        let changed = tx.execute(
            "UPDATE grant_requests SET state = ?1, reasons = ?2, grant_id = ?3, decided_at = ?4,
                decided_by = ?5 WHERE id = ?6 AND state = ?7",
            params![
                state,
                reason,
                grant,
                now,
                actor,
                id,
                ApplicationState::Pending
            ],
        )?;
        if changed != 1 {
            return Err(Error::Conflict(format!(
                "grant request {id} is no longer pending"
            )));
        }
        let event = match (state == ApplicationState::Approved, grant, reason) {
            (true, Some(grant), _) => audit::Event::GrantRequestApproved { grant },
            (false, _, Some(reason)) => audit::Event::GrantRequestRejected { reason },
            _ => {
                return Err(Error::internal(
                    "recording a grant request's decision without its grant or its reason",
                ));
            }
        };
        audit::append(tx, actor, id, event)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        text.parse().expect("date")
    }

    #[test]
    fn working_days_skip_weekends() {
        // 2026-11-20 is a Friday.
        assert_eq!(
            working_days_between(day("2026-11-20"), day("2026-11-20")),
            0
        );
        assert_eq!(
            working_days_between(day("2026-11-20"), day("2026-11-22")),
            0
        );
        assert_eq!(
            working_days_between(day("2026-11-20"), day("2026-11-23")),
            1
        );
        assert_eq!(
            working_days_between(day("2026-11-20"), day("2026-11-27")),
            5
        );
        assert_eq!(
            working_days_between(day("2026-11-23"), day("2026-11-20")),
            0
        );
    }

    #[test]
    fn a_stored_application_state_outside_the_enum_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::init(&dir.path().join("store")).expect("store");
        store
            .conn()
            .execute(
                "INSERT INTO grant_requests (id, operator, datasets_json, purpose, valid_from,
                    valid_to, micro_epsilon_per_period, pico_delta_per_period, disposition, state,
                    submitted_at)
                 VALUES ('greq-1', 'op', '[]', 'study', '2026-12-01', '2026-12-31', 1000000, 0,
                    'archive', 'withdrawn', '2026-11-20T02:00:00Z')",
                [],
            )
            .expect("insert");
        let error = application(&store, "greq-1").expect_err("an unknown state");
        let message = error.to_string();
        assert!(matches!(error, Error::Internal(_)), "{message}");
        assert!(
            message.contains("grant_requests.state")
                && message.contains("\"withdrawn\"")
                && message.contains("pending, approved, rejected"),
            "{message}"
        );
        for state in ApplicationState::ALL {
            assert_eq!(
                ApplicationState::from_stored(state.as_str()).ok(),
                Some(state)
            );
        }
    }

    #[test]
    fn a_grant_or_request_without_delta_is_refused_saying_no_job_could_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::init(&dir.path().join("store")).expect("store");
        let request = GrantRequest {
            operator: "op".into(),
            datasets: vec!["social_insurance".into()],
            purpose: "study".into(),
            valid_from: day("2026-12-01"),
            valid_to: day("2026-12-31"),
            epsilon_per_month: 1.0,
            delta_per_month: 0.0,
            disposition: Disposition::Archive,
            ownership: Ownership::Operator,
        };
        for refused in [
            create(&mut store, request.clone()).map(|_| ()),
            apply(&mut store, request.clone()).map(|_| ()),
        ] {
            let message = refused.expect_err("δ 0 is refused").to_string();
            assert!(message.contains("no job could run"), "{message}");
        }
    }

    #[test]
    fn a_pending_request_is_overdue_after_five_working_days() {
        let mut application = Application {
            id: "greq-1".into(),
            operator: "op".into(),
            datasets: vec!["social_insurance".into()],
            purpose: "study".into(),
            valid_from: day("2026-12-01"),
            valid_to: day("2026-12-31"),
            micro_epsilon_per_month: MicroEpsilon(1_000_000),
            pico_delta_per_month: PicoDelta(0),
            disposition: Disposition::Archive,
            ownership: Ownership::Operator,
            state: ApplicationState::Pending,
            reasons: None,
            grant_id: None,
            // Friday 2026-11-20, 10:00 in Beijing.
            submitted_at: "2026-11-20T02:00:00Z".into(),
            decided_at: None,
        };
        assert_eq!(application.working_days_waiting(day("2026-11-27")), 5);
        assert!(!application.is_overdue(day("2026-11-27")));
        assert!(application.is_overdue(day("2026-11-30")));
        application.state = ApplicationState::Approved;
        assert!(
            !application.is_overdue(day("2026-11-30")),
            "only pending requests wait"
        );
    }
}
