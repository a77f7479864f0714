//! The ledger: double-entry, append-only, in whole fen.
//!
//! Every business event that moves money is one **posting** — a released run ([`post_run`]),
//! a product sale ([`post_sale`]) or the refund of a sale after an upheld dispute
//! ([`post_refund`]) — made of two or more **lines**. A line debits or credits one
//! account by a positive number of fen; in every posting the debits equal the credits, which
//! [`insert_posting`] checks before anything is written. Accounts are named by role:
//! `operator:<name>`, `provider:<name>`, `buyer:<name>` and `platform` (see [`Account`]). A
//! debit is what the account owes (the payer), a credit what it earns (the payee).
//!
//! Each posting names its source (`job` id, `purchase` id or `dispute` id, at most one posting
//! per source),
//! the sequence number of the audit entry that recorded the event, and its period (`YYYY-MM`
//! in the bureau's time, from the clock). Postings are written in the same transaction as the
//! event, so a run or a sale and its money commit together or not at all. Nothing edits or
//! removes a posting: the store has no code path that does, and SQLite triggers abort any
//! `UPDATE` or `DELETE` on the ledger tables. A mistake is corrected by a new posting.
//!
//! # What a posting holds
//!
//! ```text
//! released run    operator:<op>    debit  price                (per-run fee + rows fee)
//!                 platform         credit per-run fee
//!                 provider:<p>     credit rows fee × rows(d) / rows(all)   one line per dataset d
//!                 platform         credit what rounding left of the rows fee
//! product sale    buyer:<b>        debit  price
//!                 provider:<p>     credit pool × rows(d) / rows(all)       one line per dataset d,
//!                                         pool = price × provider_bp / 10 000
//!                 operator:<op>    credit price × operator_bp / 10 000
//!                 platform         credit the rest (its share and every rounding remainder)
//! refund          every line of the sale with debit and credit swapped, to the fen
//! ```
//!
//! `rows(d)` is the registered row count of dataset `d`, for the datasets the job read (its
//! budget reservations) — a value-independent weight, the same whatever the query selected.
//!
//! # Rounding rule
//!
//! Every provider and operator share is rounded **down** to the whole fen (the provider pool
//! first, then each dataset's part of it); the **platform receives the remainder**, so the
//! lines of a posting always add up to its price exactly and no fen is lost or created. Lines
//! of zero fen are left out, and a posting of zero fen is not written at all.

use chrono::DateTime;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::budget::Period;
use crate::error::{Error, Result};
use crate::ids::Fen;
use crate::metering::{EndState, MeterRecord};
use crate::prices::{BASIS_POINTS_TOTAL, Shares};
use crate::store::WriteTx;
use crate::templates::{self, Approval};
use crate::{budget, catalog};

/// Item of a run's operator line.
pub const ITEM_RUN_CHARGE: &str = "run charge";
/// Item of the platform's per-run fee line.
pub const ITEM_PER_RUN_FEE: &str = "per-run fee";
/// Item of a provider's rows fee line.
pub const ITEM_ROWS_FEE: &str = "rows fee";
/// Item of the platform's line for what rounding left of the rows fee.
pub const ITEM_ROWS_FEE_REMAINDER: &str = "rows fee rounding remainder";
/// Item of a buyer's line.
pub const ITEM_SALE_PRICE: &str = "sale price";
/// Item of a provider's share of a sale.
pub const ITEM_PROVIDER_SHARE: &str = "provider share";
/// Item of the operator's share of a sale.
pub const ITEM_OPERATOR_SHARE: &str = "operator share";
/// Item of the platform's share of a sale, with every rounding remainder.
pub const ITEM_PLATFORM_SHARE: &str = "platform share";
/// Item of a refund's line that reverses a sale's buyer line.
pub const ITEM_REFUND_SALE_PRICE: &str = "refund of sale price";
/// Item of a refund's line that reverses a provider's share of a sale.
pub const ITEM_REFUND_PROVIDER_SHARE: &str = "refund of provider share";
/// Item of a refund's line that reverses the operator's share of a sale.
pub const ITEM_REFUND_OPERATOR_SHARE: &str = "refund of operator share";
/// Item of a refund's line that reverses the platform's share of a sale.
pub const ITEM_REFUND_PLATFORM_SHARE: &str = "refund of platform share";

/// Each sale line's item and the item of the refund line that reverses it.
const REFUND_ITEMS: [(&str, &str); 4] = [
    (ITEM_SALE_PRICE, ITEM_REFUND_SALE_PRICE),
    (ITEM_PROVIDER_SHARE, ITEM_REFUND_PROVIDER_SHARE),
    (ITEM_OPERATOR_SHARE, ITEM_REFUND_OPERATOR_SHARE),
    (ITEM_PLATFORM_SHARE, ITEM_REFUND_PLATFORM_SHARE),
];

/// The most lines one posting may have. A posting has one line per dataset a job read plus a
/// few fixed ones; a grant names far fewer datasets than this.
pub const POSTING_LINES_MAX: usize = 1_000;

/// Who a ledger line belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Account {
    Platform,
    Operator(String),
    Provider(String),
    Buyer(String),
}

impl Account {
    /// The stored text: `platform` or `<role>:<name>`.
    pub fn as_text(&self) -> String {
        match self {
            Self::Platform => "platform".to_string(),
            Self::Operator(name) => format!("operator:{name}"),
            Self::Provider(name) => format!("provider:{name}"),
            Self::Buyer(name) => format!("buyer:{name}"),
        }
    }

    /// Parses the stored text (also what a user gives to name a statement's party).
    pub fn parse(text: &str) -> Result<Self> {
        if text == "platform" {
            return Ok(Self::Platform);
        }
        let parsed = match text.split_once(':') {
            Some(("operator", name)) if !name.is_empty() => Self::Operator(name.to_string()),
            Some(("provider", name)) if !name.is_empty() => Self::Provider(name.to_string()),
            Some(("buyer", name)) if !name.is_empty() => Self::Buyer(name.to_string()),
            _ => {
                return Err(Error::invalid(
                    "name an account as `platform`, `operator:<name>`, `provider:<name>` or `buyer:<name>`",
                ));
            }
        };
        Ok(parsed)
    }

    /// The role part: `platform`, `operator`, `provider` or `buyer`.
    pub fn role(&self) -> &'static str {
        match self {
            Self::Platform => "platform",
            Self::Operator(_) => "operator",
            Self::Provider(_) => "provider",
            Self::Buyer(_) => "buyer",
        }
    }
}

/// A line before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineDraft {
    pub account: Account,
    pub debit: Fen,
    pub credit: Fen,
    pub item: &'static str,
    /// The dataset a provider line is for.
    pub dataset_id: Option<String>,
}

impl LineDraft {
    fn debit(account: Account, amount: Fen, item: &'static str) -> Self {
        Self {
            account,
            debit: amount,
            credit: Fen(0),
            item,
            dataset_id: None,
        }
    }

    fn credit(account: Account, amount: Fen, item: &'static str) -> Self {
        Self {
            account,
            debit: Fen(0),
            credit: amount,
            item,
            dataset_id: None,
        }
    }
}

/// One stored line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub id: i64,
    pub account: String,
    pub debit: Fen,
    pub credit: Fen,
    pub item: String,
    pub dataset_id: Option<String>,
}

/// One stored posting with its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub id: i64,
    /// `run`, `sale` or `refund`.
    pub kind: String,
    /// `job`, `purchase` or `dispute`.
    pub source_kind: String,
    pub source_id: String,
    pub period: Period,
    pub at: String,
    pub audit_seq: i64,
    pub lines: Vec<Line>,
}

impl Posting {
    pub fn debits(&self) -> i128 {
        self.lines.iter().map(|l| i128::from(l.debit.0)).sum()
    }

    pub fn credits(&self) -> i128 {
        self.lines.iter().map(|l| i128::from(l.credit.0)).sum()
    }
}

/// A line as the audit entry of its event records it (`ledger_lines` in the details of
/// `meter.recorded` and `product.purchased`), so `veil audit verify` can tell a line edited
/// in the database from the one the platform wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditedLine {
    pub account: String,
    pub debit_fen: i64,
    pub credit_fen: i64,
    pub item: String,
    pub dataset_id: Option<String>,
}

impl AuditedLine {
    /// "a debit of N fen" or "a credit of N fen".
    pub fn amount(&self) -> String {
        if self.debit_fen != 0 {
            format!("a debit of {} fen", self.debit_fen)
        } else {
            format!("a credit of {} fen", self.credit_fen)
        }
    }
}

impl From<&LineDraft> for AuditedLine {
    fn from(line: &LineDraft) -> Self {
        Self {
            account: line.account.as_text(),
            debit_fen: line.debit.0,
            credit_fen: line.credit.0,
            item: line.item.to_string(),
            dataset_id: line.dataset_id.clone(),
        }
    }
}

impl From<&Line> for AuditedLine {
    fn from(line: &Line) -> Self {
        Self {
            account: line.account.clone(),
            debit_fen: line.debit.0,
            credit_fen: line.credit.0,
            item: line.item.clone(),
            dataset_id: line.dataset_id.clone(),
        }
    }
}

/// The lines as an audit entry's details hold them.
pub fn audited(lines: &[LineDraft]) -> serde_json::Value {
    let lines: Vec<AuditedLine> = lines.iter().map(AuditedLine::from).collect();
    serde_json::to_value(lines).unwrap_or_default()
}

/// What one dataset contributed to a job: its registered rows, which weigh its provider's
/// part of a rows fee or a sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    pub dataset_id: String,
    pub provider: String,
    pub rows: u64,
}

/// A sale to post (built by `market::purchase`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    pub purchase_id: String,
    pub buyer: String,
    pub operator: String,
    pub price: Fen,
    pub shares: Shares,
    pub at: String,
}

/// `amount × weight / total`, rounded down; 0 when there is no weight at all.
fn part(amount: i64, weight: u64, total: u128) -> i64 {
    if total == 0 {
        return 0;
    }
    // amount < 2^63 and weight < 2^64, so the product fits in an i128 / u128.
    let exact = u128::from(amount.unsigned_abs()) * u128::from(weight) / total;
    // The part is at most `amount`, so it fits back into an i64.
    i64::try_from(exact).unwrap_or(amount)
}

/// Provider lines for `amount`, one per contributing dataset, each rounded down; returns the
/// lines and what they add up to.
fn provider_lines(
    amount: i64,
    contributions: &[Contribution],
    item: &'static str,
) -> (Vec<LineDraft>, i64) {
    let total: u128 = contributions.iter().map(|c| u128::from(c.rows)).sum();
    let mut lines = Vec::new();
    let mut given = 0i64;
    for c in contributions {
        let share = part(amount, c.rows, total);
        given += share;
        let mut line = LineDraft::credit(Account::Provider(c.provider.clone()), Fen(share), item);
        line.dataset_id = Some(c.dataset_id.clone());
        lines.push(line);
    }
    (lines, given)
}

/// The lines of a released run (see the module docs): `price` charged to the operator, the
/// per-run fee (at most the price) to the platform, the rest as rows fee to the providers by
/// rows contributed, the rounding remainder to the platform. Zero lines are dropped.
pub fn split_run(
    price: Fen,
    per_run_fee: Fen,
    operator: &str,
    contributions: &[Contribution],
) -> Vec<LineDraft> {
    let price = price.0.max(0);
    let run_fee = per_run_fee.0.clamp(0, price);
    let rows_fee = price - run_fee;
    let (providers, given) = provider_lines(rows_fee, contributions, ITEM_ROWS_FEE);
    let mut lines = vec![
        LineDraft::debit(
            Account::Operator(operator.to_string()),
            Fen(price),
            ITEM_RUN_CHARGE,
        ),
        LineDraft::credit(Account::Platform, Fen(run_fee), ITEM_PER_RUN_FEE),
    ];
    lines.extend(providers);
    lines.push(LineDraft::credit(
        Account::Platform,
        Fen(rows_fee - given),
        ITEM_ROWS_FEE_REMAINDER,
    ));
    lines.retain(|l| l.debit.0 != 0 || l.credit.0 != 0);
    lines
}

/// The lines of a sale (see the module docs and its rounding rule). Zero lines are dropped.
pub fn split_sale(
    price: Fen,
    shares: Shares,
    buyer: &str,
    operator: &str,
    contributions: &[Contribution],
) -> Vec<LineDraft> {
    let price = price.0.max(0);
    let basis = |bp: i64| -> i64 {
        let exact = i128::from(price) * i128::from(bp.clamp(0, BASIS_POINTS_TOTAL))
            / i128::from(BASIS_POINTS_TOTAL);
        // At most the price, so it fits.
        i64::try_from(exact).unwrap_or(price)
    };
    let pool = basis(shares.provider_bp);
    let operator_share = basis(shares.operator_bp);
    let (providers, given) = provider_lines(pool, contributions, ITEM_PROVIDER_SHARE);
    let mut lines = vec![LineDraft::debit(
        Account::Buyer(buyer.to_string()),
        Fen(price),
        ITEM_SALE_PRICE,
    )];
    lines.extend(providers);
    lines.push(LineDraft::credit(
        Account::Operator(operator.to_string()),
        Fen(operator_share),
        ITEM_OPERATOR_SHARE,
    ));
    lines.push(LineDraft::credit(
        Account::Platform,
        Fen(price - given - operator_share),
        ITEM_PLATFORM_SHARE,
    ));
    lines.retain(|l| l.debit.0 != 0 || l.credit.0 != 0);
    lines
}

/// Checks the double-entry rules for one posting's lines: at least two, each a positive debit
/// or a positive credit (not both), debits equal to credits.
pub fn check_balanced(lines: &[LineDraft]) -> Result<()> {
    if lines.len() < 2 || lines.len() > POSTING_LINES_MAX {
        return Err(Error::internal(format!(
            "checking a ledger posting: it has {} lines; a posting needs 2 to {POSTING_LINES_MAX}",
            lines.len()
        )));
    }
    let mut debits = 0i128;
    let mut credits = 0i128;
    for line in lines {
        let one_sided = (line.debit.0 > 0) != (line.credit.0 > 0);
        if !one_sided || line.debit.0 < 0 || line.credit.0 < 0 {
            return Err(Error::internal(
                "checking a ledger posting: a line must debit or credit a positive amount",
            ));
        }
        debits += i128::from(line.debit.0);
        credits += i128::from(line.credit.0);
    }
    if debits != credits {
        return Err(Error::internal(format!(
            "checking a ledger posting: debits {debits} fen differ from credits {credits} fen"
        )));
    }
    Ok(())
}

/// Writes one posting inside the caller's transaction, after [`check_balanced`]; returns its
/// id. `at` is the event's time (RFC 3339); the period is derived from it in bureau time.
pub fn insert_posting(
    tx: &WriteTx<'_>,
    kind: &str,
    source_kind: &str,
    source_id: &str,
    at: &str,
    audit_seq: i64,
    lines: &[LineDraft],
) -> Result<i64> {
    check_balanced(lines)?;
    let instant = DateTime::parse_from_rfc3339(at)
        .map_err(|_| Error::internal("reading the time of a ledger posting"))?
        .with_timezone(&chrono::Utc);
    let period = Period::of(instant);
    tx.execute(
        "INSERT INTO ledger_postings (kind, source_kind, source_id, period, at, audit_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![kind, source_kind, source_id, period.as_str(), at, audit_seq],
    )?;
    let posting_id = tx.last_insert_rowid();
    for line in lines {
        tx.execute(
            "INSERT INTO ledger_lines (posting_id, account, debit_fen, credit_fen, item, dataset_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                posting_id,
                line.account.as_text(),
                line.debit.0,
                line.credit.0,
                line.item,
                line.dataset_id
            ],
        )?;
    }
    Ok(posting_id)
}

/// The datasets a job read (its budget reservations) with their providers and registered
/// rows, ordered by dataset id.
///
/// The reservations are the budget book's and the registrations the catalog's, so each is
/// asked for its own; a reservation on a dataset the catalog no longer holds is left out.
pub fn contributions(conn: &Connection, job_id: &str) -> Result<Vec<Contribution>> {
    let mut out = Vec::new();
    for dataset_id in budget::datasets_read_by_job(conn, job_id)? {
        let Some(dataset) = catalog::stored(conn, &dataset_id)? else {
            continue;
        };
        out.push(Contribution {
            provider: stored_provider(&dataset.policy_json)?,
            dataset_id: dataset.id,
            rows: u64::try_from(dataset.rows).unwrap_or(0),
        });
    }
    Ok(out)
}

/// The provider named in a dataset's stored policy; a policy that does not parse or names
/// none is Veil's fault, not the caller's.
fn stored_provider(policy_json: &str) -> Result<String> {
    let policy: serde_json::Value = serde_json::from_str(policy_json)
        .map_err(|_| Error::internal("reading a dataset's stored policy"))?;
    Ok(policy
        .get("provider")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| Error::internal("reading the provider of a dataset's stored policy"))?
        .to_string())
}

/// The lines a job's meter record posts (see [`post_run`]); none for a run that is not
/// charged.
///
/// The per-run fee is the one pinned in the template's approval; whatever the meter charged
/// beyond it is the rows fee (see `prices`).
pub fn run_lines(conn: &Connection, meter: &MeterRecord) -> Result<Vec<LineDraft>> {
    if meter.end_state != EndState::Released || meter.price.0 <= 0 {
        return Ok(Vec::new());
    }
    let approval_json = templates::stored_approval(conn, &meter.template_id)?;
    let per_run_fee = match approval_json {
        Some(json) => {
            serde_json::from_str::<Approval>(&json)
                .map_err(|_| Error::internal("reading a template's approval for the ledger"))?
                .price_per_run
        }
        None => {
            return Err(Error::internal(
                "posting a run whose template has no approval",
            ));
        }
    };
    let contributions = contributions(conn, &meter.job_id)?;
    Ok(split_run(
        meter.price,
        per_run_fee,
        &meter.operator,
        &contributions,
    ))
}

/// Posts a job's meter record, inside the job's final transaction, next to the audit entry
/// `audit_seq` that recorded it (with [`run_lines`] in its details). Only released, charged
/// runs post (a reused product's run, a rejected or failed run costs nothing); returns the
/// posting id if one was written.
pub fn post_run(tx: &WriteTx<'_>, meter: &MeterRecord, audit_seq: i64) -> Result<Option<i64>> {
    let lines = run_lines(tx, meter)?;
    if lines.is_empty() {
        return Ok(None);
    }
    insert_posting(
        tx,
        "run",
        "job",
        &meter.job_id,
        &meter.at,
        audit_seq,
        &lines,
    )
    .map(Some)
}

/// The lines a sale posts (see [`post_sale`]); none for a sale of zero fen.
pub fn sale_lines(conn: &Connection, sale: &Sale, job_id: &str) -> Result<Vec<LineDraft>> {
    if sale.price.0 <= 0 {
        return Ok(Vec::new());
    }
    let contributions = contributions(conn, job_id)?;
    Ok(split_sale(
        sale.price,
        sale.shares,
        &sale.buyer,
        &sale.operator,
        &contributions,
    ))
}

/// Posts a sale inside the purchase's transaction, next to the audit entry `audit_seq` that
/// recorded it (with [`sale_lines`] in its details); `job_id` is the job that made the
/// product. Returns the posting id if one was written (a sale of zero fen writes none).
pub fn post_sale(
    tx: &WriteTx<'_>,
    sale: &Sale,
    job_id: &str,
    audit_seq: i64,
) -> Result<Option<i64>> {
    let lines = sale_lines(tx, sale, job_id)?;
    if lines.is_empty() {
        return Ok(None);
    }
    insert_posting(
        tx,
        "sale",
        "purchase",
        &sale.purchase_id,
        &sale.at,
        audit_seq,
        &lines,
    )
    .map(Some)
}

/// The lines that reverse a sale posting exactly (see [`post_refund`]): each account the sale
/// credited is debited the same fen and each account it debited is credited, so the refund
/// balances and every party's net for the sale returns to zero. A posting that is not a sale,
/// or a line whose item a sale does not write, is Veil's fault and refused.
pub fn refund_lines(sale: &Posting) -> Result<Vec<LineDraft>> {
    if sale.kind != "sale" {
        return Err(Error::internal(format!(
            "refunding ledger posting {}: it is a {} posting, not a sale",
            sale.id, sale.kind
        )));
    }
    sale.lines
        .iter()
        .map(|line| {
            let Some((_, item)) = REFUND_ITEMS.iter().find(|(sold, _)| *sold == line.item) else {
                return Err(Error::internal(format!(
                    "refunding ledger posting {}: line {} has an item a sale does not write",
                    sale.id, line.id
                )));
            };
            Ok(LineDraft {
                account: Account::parse(&line.account)?,
                debit: line.credit,
                credit: line.debit,
                item,
                dataset_id: line.dataset_id.clone(),
            })
        })
        .collect()
}

/// Posts a refund (lines from [`refund_lines`]) inside the transaction that upholds the
/// dispute `dispute_id`, next to the audit entry `audit_seq` that recorded it (with the lines in
/// its details). The sale's own posting stays as it is: the ledger is append-only, so a refund
/// is a new posting. Returns the posting id.
pub fn post_refund(
    tx: &WriteTx<'_>,
    dispute_id: &str,
    at: &str,
    audit_seq: i64,
    lines: &[LineDraft],
) -> Result<i64> {
    insert_posting(tx, "refund", "dispute", dispute_id, at, audit_seq, lines)
}

/// One posting with its lines, if it exists.
pub fn posting(conn: &Connection, id: i64) -> Result<Option<Posting>> {
    let mut statement = conn.prepare_cached(
        "SELECT p.kind, p.source_kind, p.source_id, p.period, p.at, p.audit_seq
         FROM ledger_postings p WHERE p.id = ?1",
    )?;
    let head = statement
        .query_row([id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, i64>(5)?,
            ))
        })
        .optional()?;
    let Some((kind, source_kind, source_id, period, at, audit_seq)) = head else {
        return Ok(None);
    };
    let period = Period::parse(&period).map_err(|_| {
        Error::internal("reading ledger_postings.period: it is not a YYYY-MM month")
    })?;
    let lines = crate::store::query_rows(
        conn,
        "SELECT id, account, debit_fen, credit_fen, item, dataset_id FROM ledger_lines
         WHERE posting_id = ?1 ORDER BY id",
        [id],
        |row| {
            Ok(Line {
                id: row.get(0)?,
                account: row.get(1)?,
                debit: Fen(row.get(2)?),
                credit: Fen(row.get(3)?),
                item: row.get(4)?,
                dataset_id: row.get(5)?,
            })
        },
    )?;
    Ok(Some(Posting {
        id,
        kind,
        source_kind,
        source_id,
        period,
        at,
        audit_seq,
        lines,
    }))
}

/// Every posting with its lines, in the order they were written; only those of `period` if
/// one is given.
/// What `account` earned from dataset `dataset_id`: the credits of its lines that name the
/// dataset minus their debits (a refund reverses a sale's credit), over postings made at or
/// after `since` (RFC 3339), or all of them.
pub fn earned_from_dataset(
    conn: &Connection,
    account: &str,
    dataset_id: &str,
    since: Option<&str>,
) -> Result<Fen> {
    let net: i64 = conn.query_row(
        "SELECT COALESCE(SUM(l.credit_fen), 0) - COALESCE(SUM(l.debit_fen), 0)
         FROM ledger_lines l JOIN ledger_postings p ON p.id = l.posting_id
         WHERE l.account = ?1 AND l.dataset_id = ?2 AND p.at >= ?3",
        params![account, dataset_id, since.unwrap_or("")],
        |row| row.get(0),
    )?;
    Ok(Fen(net))
}

pub fn postings(conn: &Connection, period: Option<&Period>) -> Result<Vec<Posting>> {
    let mut statement = conn.prepare(
        "SELECT p.id, p.kind, p.source_kind, p.source_id, p.period, p.at, p.audit_seq,
                l.id, l.account, l.debit_fen, l.credit_fen, l.item, l.dataset_id
         FROM ledger_postings p JOIN ledger_lines l ON l.posting_id = p.id
         WHERE ?1 IS NULL OR p.period = ?1
         ORDER BY p.id, l.id",
    )?;
    let rows = statement.query_map([period.map(Period::as_str)], |row| {
        // A stored period that is not `YYYY-MM` is reported naming its column, rather than as
        // SQLite's conversion error.
        let Ok(period) = Period::parse(&row.get::<_, String>(4)?) else {
            return Ok(Err(Error::internal(
                "reading ledger_postings.period: it is not a YYYY-MM month",
            )));
        };
        Ok(Ok((
            Posting {
                id: row.get(0)?,
                kind: row.get(1)?,
                source_kind: row.get(2)?,
                source_id: row.get(3)?,
                period,
                at: row.get(5)?,
                audit_seq: row.get(6)?,
                lines: Vec::new(),
            },
            Line {
                id: row.get(7)?,
                account: row.get(8)?,
                debit: Fen(row.get(9)?),
                credit: Fen(row.get(10)?),
                item: row.get(11)?,
                dataset_id: row.get(12)?,
            },
        )))
    })?;
    let mut out: Vec<Posting> = Vec::new();
    for row in rows {
        let (posting, line) = row??;
        match out.last_mut() {
            Some(last) if last.id == posting.id => last.lines.push(line),
            _ => {
                let mut posting = posting;
                posting.lines.push(line);
                out.push(posting);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contribution(dataset: &str, provider: &str, rows: u64) -> Contribution {
        Contribution {
            dataset_id: dataset.into(),
            provider: provider.into(),
            rows,
        }
    }

    fn sum_credits(lines: &[LineDraft]) -> i64 {
        lines.iter().map(|l| l.credit.0).sum()
    }

    #[test]
    fn a_run_pays_the_platform_and_the_providers_by_rows() {
        let contributions = [
            contribution("ds-a", "HRSS", 2_000),
            contribution("ds-b", "SAMR", 1_000),
        ];
        // 100 fen per run, 200 fen rows fee: 2/3 and 1/3 of 200 are 133.33 and 66.67.
        let lines = split_run(Fen(300), Fen(100), "op", &contributions);
        check_balanced(&lines).expect("balanced");
        let amounts: Vec<(String, i64, i64)> = lines
            .iter()
            .map(|l| (l.account.as_text(), l.debit.0, l.credit.0))
            .collect();
        assert_eq!(
            amounts,
            [
                ("operator:op".to_string(), 300, 0),
                ("platform".to_string(), 0, 100),
                ("provider:HRSS".to_string(), 0, 133),
                ("provider:SAMR".to_string(), 0, 66),
                ("platform".to_string(), 0, 1),
            ]
        );
    }

    #[test]
    fn a_sale_rounds_shares_down_and_gives_the_rest_to_the_platform() {
        let contributions = [
            contribution("ds-a", "HRSS", 1),
            contribution("ds-b", "SAMR", 2),
        ];
        let shares = Shares {
            provider_bp: 4_000,
            platform_bp: 2_000,
            operator_bp: 4_000,
        };
        // 999 fen: pool 399 (399.6 down), HRSS 133, SAMR 266, operator 399, platform 201.
        let lines = split_sale(Fen(999), shares, "b", "op", &contributions);
        check_balanced(&lines).expect("balanced");
        let credits: Vec<(String, i64)> = lines
            .iter()
            .filter(|l| l.credit.0 > 0)
            .map(|l| (l.account.as_text(), l.credit.0))
            .collect();
        assert_eq!(
            credits,
            [
                ("provider:HRSS".to_string(), 133),
                ("provider:SAMR".to_string(), 266),
                ("operator:op".to_string(), 399),
                ("platform".to_string(), 201),
            ]
        );
        assert_eq!(sum_credits(&lines), 999);
    }

    /// A stored posting of `kind` holding `lines`, as `postings` would read it back.
    fn stored(kind: &str, lines: &[LineDraft]) -> Posting {
        Posting {
            id: 7,
            kind: kind.into(),
            source_kind: "purchase".into(),
            source_id: "pur-1".into(),
            period: Period::parse("2026-11").expect("period"),
            at: "2026-11-02T00:00:00Z".into(),
            audit_seq: 3,
            lines: lines
                .iter()
                .enumerate()
                .map(|(i, l)| Line {
                    id: i as i64 + 1,
                    account: l.account.as_text(),
                    debit: l.debit,
                    credit: l.credit,
                    item: l.item.into(),
                    dataset_id: l.dataset_id.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_refund_reverses_every_line_of_its_sale_to_the_fen() {
        let contributions = [
            contribution("ds-a", "HRSS", 1),
            contribution("ds-b", "SAMR", 2),
        ];
        let shares = Shares {
            provider_bp: 4_000,
            platform_bp: 2_000,
            operator_bp: 4_000,
        };
        let sale = split_sale(Fen(999), shares, "b", "op", &contributions);
        let refund = refund_lines(&stored("sale", &sale)).expect("refund");
        check_balanced(&refund).expect("balanced");
        let mut net: std::collections::BTreeMap<(String, Option<String>), i64> = Default::default();
        for line in sale.iter().chain(&refund) {
            *net.entry((line.account.as_text(), line.dataset_id.clone()))
                .or_default() += line.credit.0 - line.debit.0;
        }
        assert!(net.values().all(|n| *n == 0), "{net:?}");
        assert_eq!(refund[0].account, Account::Buyer("b".into()));
        assert_eq!((refund[0].debit, refund[0].credit), (Fen(0), Fen(999)));
        assert_eq!(refund[0].item, ITEM_REFUND_SALE_PRICE);
        // Only a sale is refunded.
        let run = split_run(Fen(300), Fen(100), "op", &contributions);
        assert!(matches!(
            refund_lines(&stored("run", &run)),
            Err(Error::Internal(_))
        ));
    }

    #[test]
    fn zero_lines_are_dropped_and_unbalanced_postings_refused() {
        let lines = split_run(Fen(100), Fen(100), "op", &[]);
        assert_eq!(lines.len(), 2);
        let mut broken = lines.clone();
        broken[1].credit = Fen(99);
        assert!(matches!(check_balanced(&broken), Err(Error::Internal(_))));
        assert!(check_balanced(&lines[..1]).is_err());
    }

    #[test]
    fn accounts_round_trip_and_bad_names_are_refused() {
        for account in [
            Account::Platform,
            Account::Operator("Shanxi Data Co.".into()),
            Account::Provider("省人社厅".into()),
            Account::Buyer("b:1".into()),
        ] {
            assert_eq!(Account::parse(&account.as_text()).expect("parse"), account);
        }
        for bad in ["", "operator:", "bank:x", "platform:x"] {
            assert!(Account::parse(bad).is_err(), "{bad}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn contributions() -> impl Strategy<Value = Vec<Contribution>> {
            prop::collection::vec((0u64..5, 0u64..10_000_000_000), 0..6).prop_map(|items| {
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, (provider, rows))| {
                        contribution(&format!("ds-{i}"), &format!("provider-{provider}"), rows)
                    })
                    .collect()
            })
        }

        fn shares() -> impl Strategy<Value = Shares> {
            (0i64..=BASIS_POINTS_TOTAL)
                .prop_flat_map(|provider| (Just(provider), 0..=BASIS_POINTS_TOTAL - provider))
                .prop_map(|(provider_bp, operator_bp)| Shares {
                    provider_bp,
                    platform_bp: BASIS_POINTS_TOTAL - provider_bp - operator_bp,
                    operator_bp,
                })
        }

        #[derive(Debug, Clone)]
        enum Event {
            Run {
                per_run_fee: i64,
                rows_fee: i64,
                contributions: Vec<Contribution>,
            },
            Sale {
                price: i64,
                shares: Shares,
                contributions: Vec<Contribution>,
            },
        }

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![
                (0i64..1_000_000, 0i64..1_000_000_000, contributions()).prop_map(
                    |(per_run_fee, rows_fee, contributions)| Event::Run {
                        per_run_fee,
                        rows_fee,
                        contributions,
                    }
                ),
                (1i64..10_000_000_000, shares(), contributions()).prop_map(
                    |(price, shares, contributions)| Event::Sale {
                        price,
                        shares,
                        contributions,
                    }
                ),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// For any sequence of runs and sales, every posting balances, its credits add up
            /// to exactly the revenue it records, and the whole ledger balances.
            #[test]
            fn every_posting_balances_and_splits_sum_to_the_revenue(
                events in prop::collection::vec(event(), 1..40)
            ) {
                let mut all_debits = 0i128;
                let mut all_credits = 0i128;
                for event in events {
                    let (revenue, lines) = match event {
                        Event::Run { per_run_fee, rows_fee, contributions } => {
                            let price = per_run_fee + rows_fee;
                            (price, split_run(Fen(price), Fen(per_run_fee), "op", &contributions))
                        }
                        Event::Sale { price, shares, contributions } => {
                            let lines = split_sale(Fen(price), shares, "b", "op", &contributions);
                            // Each rounded-down share is at most its exact value.
                            let operator: i64 = lines.iter()
                                .filter(|l| l.item == ITEM_OPERATOR_SHARE)
                                .map(|l| l.credit.0).sum();
                            prop_assert!(i128::from(operator) * 10_000
                                <= i128::from(price) * i128::from(shares.operator_bp));
                            (price, lines)
                        }
                    };
                    if revenue == 0 {
                        prop_assert!(lines.is_empty());
                        continue;
                    }
                    prop_assert!(check_balanced(&lines).is_ok());
                    prop_assert_eq!(sum_credits(&lines), revenue);
                    let debits: i64 = lines.iter().map(|l| l.debit.0).sum();
                    prop_assert_eq!(debits, revenue);
                    prop_assert!(lines.iter().all(|l| l.debit.0 >= 0 && l.credit.0 >= 0));
                    all_debits += i128::from(debits);
                    all_credits += i128::from(sum_credits(&lines));
                }
                prop_assert_eq!(all_debits, all_credits);
            }
        }
    }
}
