//! Disputes: a buyer's recourse against a purchase it finds unusable (2024 measures art. 19,
//! dispute resolution in the data market).
//!
//! ```text
//! buyer: open(purchase or product, reason) ──► open
//! bureau: uphold(reason) ──► upheld, ledger::post_refund (same transaction) ──► next statements
//! bureau: reject(reason) ──► rejected (nothing posted)
//! ```
//!
//! A buyer disputes only its own purchase, with a reason in its own words (free text; nothing
//! is attached). A purchase has at most one open dispute at a time, and once a dispute is
//! upheld the purchase cannot be disputed again, so a sale is refunded at most once (the store
//! enforces both with unique indexes as well).
//!
//! Upholding posts a **refund**: a new ledger posting of kind `refund`, source the dispute,
//! whose lines reverse the sale's posting line by line ([`ledger::refund_lines`]). The ledger
//! is append-only, so the sale's posting stays; the refund lands in the period it is posted in,
//! and that period's statements show it with the sale it reverses. The state change, the
//! posting and the audit entry (`dispute.upheld`, with the refund's lines, which `veil audit
//! verify` compares with the posting) commit together or not at all.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{Fen, ProductId};
use crate::ledger;
use crate::market::{self, Purchase};
use crate::store::{Store, query_rows};
use crate::{audit, clock};

/// The longest reason a buyer or the bureau may give, in bytes.
pub const REASON_BYTES_MAX: usize = 2_000;
/// The prefix of every dispute id.
pub const ID_PREFIX: &str = "dsp-";
/// Random bytes in a dispute id after its prefix.
const ID_RANDOM_BYTES: usize = 8;

/// Where a dispute stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Open,
    Upheld,
    Rejected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Upheld => "upheld",
            Self::Rejected => "rejected",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Open, Self::Upheld, Self::Rejected]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One dispute as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispute {
    pub id: String,
    pub purchase_id: String,
    pub buyer: String,
    pub product_id: String,
    /// The buyer's reason.
    pub reason: String,
    pub state: State,
    /// The bureau's reason for upholding or rejecting it.
    pub decision_reason: Option<String>,
    pub opened_at: String,
    pub decided_at: Option<String>,
    pub decided_by: Option<String>,
    /// The ledger posting of the refund, once upheld (none if the sale posted nothing).
    pub refund_posting_id: Option<i64>,
}

/// What a refund posting reverses: the sale's purchase, price and posting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundedSale {
    pub purchase_id: String,
    pub price: Fen,
    pub sale_posting_id: Option<i64>,
}

fn new_id() -> Result<String> {
    let mut bytes = [0u8; ID_RANDOM_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|_| Error::internal("drawing a dispute id from the OS random source"))?;
    Ok(format!("{ID_PREFIX}{}", hex::encode(bytes)))
}

/// A reason trimmed and checked against [`REASON_BYTES_MAX`]; `what` names the flag or field.
fn checked_reason<'a>(reason: &'a str, what: &str) -> Result<&'a str> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > REASON_BYTES_MAX {
        return Err(Error::invalid(format!(
            "{what} in 1–{REASON_BYTES_MAX} bytes (--reason)"
        )));
    }
    Ok(reason)
}

const COLUMNS: &str = "id, purchase_id, buyer, product_id, reason, state, decision_reason,
    opened_at, decided_at, decided_by, refund_posting_id";

fn row_to_dispute(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Dispute>> {
    let state: String = row.get(5)?;
    let Some(state) = State::parse(&state) else {
        return Ok(Err(Error::internal(
            "reading disputes.state: it is not open, upheld or rejected",
        )));
    };
    Ok(Ok(Dispute {
        id: row.get(0)?,
        purchase_id: row.get(1)?,
        buyer: row.get(2)?,
        product_id: row.get(3)?,
        reason: row.get(4)?,
        state,
        decision_reason: row.get(6)?,
        opened_at: row.get(7)?,
        decided_at: row.get(8)?,
        decided_by: row.get(9)?,
        refund_posting_id: row.get(10)?,
    }))
}

fn disputes_where(conn: &Connection, filter: &str, value: Option<&str>) -> Result<Vec<Dispute>> {
    let rows = query_rows(
        conn,
        &format!("SELECT {COLUMNS} FROM disputes WHERE {filter} ORDER BY opened_at, id"),
        [value],
        row_to_dispute,
    )?;
    rows.into_iter().collect()
}

/// Every dispute, oldest first (the bureau's view).
pub fn list(conn: &Connection) -> Result<Vec<Dispute>> {
    disputes_where(conn, "?1 IS NULL", None)
}

/// A buyer's disputes, oldest first.
pub fn of_buyer(conn: &Connection, buyer: &str) -> Result<Vec<Dispute>> {
    disputes_where(conn, "buyer = ?1", Some(buyer))
}

/// One dispute; not found if it does not exist.
pub fn get(conn: &Connection, id: &str) -> Result<Dispute> {
    let found = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM disputes WHERE id = ?1"),
            [id],
            row_to_dispute,
        )
        .optional()?;
    found.transpose()?.ok_or_else(|| Error::NotFound {
        kind: "dispute",
        id: id.to_string(),
        hint: "; list disputes with `veil dispute list`",
    })
}

/// The buyer's own purchase named by its purchase id or its product id. Another buyer's
/// purchase is reported as not found, so a buyer cannot learn which purchases exist.
fn own_purchase(conn: &Connection, buyer: &str, purchase_or_product: &str) -> Result<Purchase> {
    let by_id = market::purchase_by_id(conn, purchase_or_product)?;
    let found = match by_id {
        Some(purchase) => Some(purchase),
        None => market::purchase_of(conn, buyer, &ProductId::new(purchase_or_product))?,
    };
    found
        .filter(|p| p.buyer == buyer)
        .ok_or_else(|| Error::NotFound {
            kind: "purchase",
            id: purchase_or_product.to_string(),
            hint: "; name one of your own purchases, by its purchase id or its product id",
        })
}

/// Opens a dispute on `buyer`'s own purchase (named by its purchase id or product id) with
/// the buyer's reason. Refused while another dispute on it is open, and once one was upheld.
pub fn open(
    store: &mut Store,
    buyer: &str,
    purchase_or_product: &str,
    reason: &str,
) -> Result<Dispute> {
    let reason = checked_reason(reason, "say what is wrong with the purchase")?;
    let now = clock::format(clock::now());
    let id = new_id()?;
    store.write(|tx| {
        let purchase = own_purchase(tx, buyer, purchase_or_product)?;
        for earlier in disputes_where(tx, "purchase_id = ?1", Some(&purchase.id))? {
            match earlier.state {
                State::Open => {
                    return Err(Error::Conflict(format!(
                        "purchase {} already has an open dispute ({}); wait for the bureau's decision",
                        purchase.id, earlier.id
                    )));
                }
                State::Upheld => {
                    return Err(Error::Conflict(format!(
                        "purchase {} was already refunded after dispute {}; it cannot be disputed again",
                        purchase.id, earlier.id
                    )));
                }
                State::Rejected => {}
            }
        }
        audit::append(
            tx,
            buyer,
            &id,
            audit::Event::DisputeOpened {
                purchase: &purchase.id,
                product: &purchase.product_id,
                reason,
            },
        )?;
        tx.execute(
            "INSERT INTO disputes (id, purchase_id, buyer, product_id, reason, state, opened_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6)",
            params![id, purchase.id, buyer, purchase.product_id, reason, now],
        )?;
        Ok(Dispute {
            id: id.clone(),
            purchase_id: purchase.id,
            buyer: buyer.to_string(),
            product_id: purchase.product_id,
            reason: reason.to_string(),
            state: State::Open,
            decision_reason: None,
            opened_at: now.clone(),
            decided_at: None,
            decided_by: None,
            refund_posting_id: None,
        })
    })
}

fn refuse_decided(dispute: &Dispute) -> Result<()> {
    if dispute.state != State::Open {
        return Err(Error::Conflict(format!(
            "dispute {} was already {} by {}; a decision is final",
            dispute.id,
            dispute.state.as_str(),
            dispute.decided_by.as_deref().unwrap_or("the bureau")
        )));
    }
    Ok(())
}

/// Upholds an open dispute (the bureau, `actor`): refunds the sale with a posting that
/// reverses its lines, in the same transaction as the decision and its audit entry.
pub fn uphold(store: &mut Store, actor: &str, id: &str, reason: &str) -> Result<Dispute> {
    let reason = checked_reason(reason, "say why the dispute is upheld")?;
    let now = clock::format(clock::now());
    store.write(|tx| {
        let dispute = get(tx, id)?;
        refuse_decided(&dispute)?;
        let purchase = market::purchase_by_id(tx, &dispute.purchase_id)?.ok_or_else(|| {
            Error::internal(format!(
                "upholding dispute {}: its purchase is not in the store",
                dispute.id
            ))
        })?;
        let sale = match purchase.posting_id {
            Some(posting_id) => ledger::posting(tx, posting_id)?,
            None => None,
        };
        let lines = match &sale {
            Some(sale) => ledger::refund_lines(sale)?,
            None => Vec::new(),
        };
        let seq = audit::append(
            tx,
            actor,
            &dispute.id,
            audit::Event::DisputeUpheld {
                purchase: &purchase.id,
                reason,
                price: if lines.is_empty() {
                    Fen(0)
                } else {
                    purchase.price
                },
                sale_posting: purchase.posting_id,
                ledger_lines: &lines,
            },
        )?;
        let refund_posting_id = if lines.is_empty() {
            None
        } else {
            Some(ledger::post_refund(tx, &dispute.id, &now, seq, &lines)?)
        };
        tx.execute(
            "UPDATE disputes SET state = 'upheld', decision_reason = ?2, decided_at = ?3,
                decided_by = ?4, refund_posting_id = ?5
             WHERE id = ?1 AND state = 'open'",
            params![dispute.id, reason, now, actor, refund_posting_id],
        )?;
        Ok(Dispute {
            state: State::Upheld,
            decision_reason: Some(reason.to_string()),
            decided_at: Some(now.clone()),
            decided_by: Some(actor.to_string()),
            refund_posting_id,
            ..dispute
        })
    })
}

/// Rejects an open dispute (the bureau, `actor`) with a reason the buyer is shown. Nothing
/// is posted.
pub fn reject(store: &mut Store, actor: &str, id: &str, reason: &str) -> Result<Dispute> {
    let reason = checked_reason(reason, "say why the dispute is rejected")?;
    let now = clock::format(clock::now());
    store.write(|tx| {
        let dispute = get(tx, id)?;
        refuse_decided(&dispute)?;
        audit::append(
            tx,
            actor,
            &dispute.id,
            audit::Event::DisputeRejected {
                purchase: &dispute.purchase_id,
                reason,
            },
        )?;
        tx.execute(
            "UPDATE disputes SET state = 'rejected', decision_reason = ?2, decided_at = ?3,
                decided_by = ?4
             WHERE id = ?1 AND state = 'open'",
            params![dispute.id, reason, now, actor],
        )?;
        Ok(Dispute {
            state: State::Rejected,
            decision_reason: Some(reason.to_string()),
            decided_at: Some(now.clone()),
            decided_by: Some(actor.to_string()),
            ..dispute
        })
    })
}

/// The sale a refund posting (source `dispute`, `dispute_id`) reverses, for settlement's
/// reconciliation and statements; none if the dispute does not exist.
pub fn refunded_sale(conn: &Connection, dispute_id: &str) -> Result<Option<RefundedSale>> {
    let purchase_id: Option<String> = conn
        .query_row(
            "SELECT purchase_id FROM disputes WHERE id = ?1",
            [dispute_id],
            |row| row.get(0),
        )
        .optional()?;
    let Some(purchase_id) = purchase_id else {
        return Ok(None);
    };
    let Some(purchase) = market::purchase_by_id(conn, &purchase_id)? else {
        return Ok(None);
    };
    Ok(Some(RefundedSale {
        purchase_id,
        price: purchase.price,
        sale_posting_id: purchase.posting_id,
    }))
}
