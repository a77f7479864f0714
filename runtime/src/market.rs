//! The market: released products offered for sale, bought by buyers, downloaded, recalled.
//!
//! ```text
//! operator or bureau: list_for_sale(price) ──► offers
//! buyer: purchase ──► ledger::post_sale (same transaction) ──► authorize_download ──► record_download
//! bureau: recall ──► no listing, purchase or download works; the buyers are returned to be told
//! ```
//!
//! A buyer buys a product once: buying it again returns the first purchase and charges nothing.
//! The sale shares are those of the price book version in force at the purchase and are kept
//! with it. Every listing, purchase, download and recall is audited in the transaction that
//! makes it. The returned structs carry their owners (`operator`, `buyer`) so the HTTP layer can
//! check that the caller may see them.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{Fen, ProductId, PurchaseId};
use crate::ledger::{self, Sale};
use crate::prices::{self, Shares};
use crate::principals::Role;
use crate::products::{self, Product};
use crate::store::{Store, query_rows};
use crate::{audit, clock};

/// The highest price a product may be listed at, in fen (¥100,000,000). It bounds a typing
/// mistake and keeps every share computation far inside `i64`.
pub const PRICE_FEN_MAX: i64 = 10_000_000_000;
/// The longest recall reason, in bytes.
pub const RECALL_REASON_BYTES_MAX: usize = 2_000;
/// The files of a product a buyer may download (see `products`).
pub const DOWNLOADABLE_FILES: [&str; 3] = [
    products::RESULT_PARQUET,
    products::RESULT_CSV,
    veil_sdk::manifest::MANIFEST_FILE,
];

/// A product offered for sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub product_id: String,
    pub operator: String,
    pub template_id: String,
    pub rows: u64,
    pub price: Fen,
    pub listed_by: String,
    pub listed_at: String,
}

/// A buyer's purchase of one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    pub id: String,
    pub product_id: String,
    pub buyer: String,
    /// The operator who made the product.
    pub operator: String,
    pub price: Fen,
    /// The price book's shares when it was bought.
    pub shares: Shares,
    pub at: String,
    pub audit_seq: i64,
    /// The ledger posting of the sale.
    pub posting_id: Option<i64>,
    /// The bureau's recall of the product, if it was recalled after the sale.
    pub recalled: Option<RecallNotice>,
}

/// What a buyer is told of a product recalled after they bought it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecallNotice {
    pub reason: String,
    pub at: String,
}

/// One recorded download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    pub id: i64,
    pub product_id: String,
    /// Who downloaded (a buyer's name).
    pub actor: String,
    pub file_name: String,
    pub at: String,
    pub audit_seq: i64,
}

/// A product's recall, with the buyers who must be told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recall {
    pub product_id: String,
    pub operator: String,
    pub reason: String,
    pub recalled_by: String,
    pub at: String,
    pub buyers: Vec<String>,
}

fn refuse_recalled(product: &Product) -> Result<()> {
    if product.recalled {
        return Err(Error::invalid(format!(
            "product {} was recalled by the bureau; it can no longer be listed, bought or downloaded",
            product.id
        )));
    }
    Ok(())
}

const LISTING_COLUMNS: &str = "l.product_id, p.operator, p.template_id, p.rows, l.price_fen,
    l.listed_by, l.listed_at";

fn row_to_listing(row: &rusqlite::Row<'_>) -> rusqlite::Result<Listing> {
    Ok(Listing {
        product_id: row.get(0)?,
        operator: row.get(1)?,
        template_id: row.get(2)?,
        rows: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
        price: Fen(row.get(4)?),
        listed_by: row.get(5)?,
        listed_at: row.get(6)?,
    })
}

/// A product's current listing, recalled or not.
pub fn listing(conn: &Connection, product_id: &ProductId) -> Result<Option<Listing>> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {LISTING_COLUMNS} FROM listings l JOIN products p ON p.id = l.product_id
                 WHERE l.product_id = ?1"
            ),
            [product_id.as_str()],
            row_to_listing,
        )
        .optional()?)
}

/// Takes a product off sale (a grant's disposition at the end of its term); true when it was
/// on sale. Its purchases and their ledger lines stay.
pub fn withdraw(tx: &rusqlite::Transaction<'_>, product_id: &str) -> Result<bool> {
    Ok(tx.execute("DELETE FROM listings WHERE product_id = ?1", [product_id])? > 0)
}

/// Lists a product for sale at `price`, or changes its price. Only the product's operator
/// (`role` operator, `actor` its name) or the bureau may; a recalled product cannot be listed,
/// nor one its grant's disposition destroyed or archived (a returned one: the bureau only).
pub fn list_for_sale(
    store: &mut Store,
    role: Role,
    actor: &str,
    product_id: &ProductId,
    price: Fen,
) -> Result<Listing> {
    if !(1..=PRICE_FEN_MAX).contains(&price.0) {
        return Err(Error::invalid(format!(
            "give a price between 1 and {PRICE_FEN_MAX} fen (--price-fen)"
        )));
    }
    let now = clock::format(clock::now());
    store.write(|tx| {
        let product = products::get(tx, product_id)?;
        let allowed = match role {
            Role::Bureau => true,
            Role::Operator => product.operator == actor,
            Role::Provider | Role::Buyer => false,
        };
        if !allowed {
            return Err(Error::invalid(
                "only the operator who made a product, or the bureau, can list it for sale",
            ));
        }
        refuse_recalled(&product)?;
        match products::state_of(tx, product_id.as_str())?.as_deref() {
            Some(state @ ("destroyed" | "archived")) => {
                return Err(Error::Conflict(format!(
                    "product {product_id} was {state} when its grant's term ended; it can no longer be sold"
                )));
            }
            Some("returned") if role != Role::Bureau => {
                return Err(Error::Conflict(format!(
                    "product {product_id} was returned to the bureau when its grant's term ended; only the bureau may sell it"
                )));
            }
            _ => {}
        }
        let previous = listing(tx, product_id)?;
        if let Some(previous) = &previous
            && previous.price == price
        {
            return Ok(previous.clone());
        }
        let seq = audit::append(
            tx,
            actor,
            product_id.as_str(),
            audit::Event::ProductListed {
                price,
                previous_price: previous.as_ref().map(|l| l.price),
            },
        )?;
        tx.execute(
            "INSERT INTO listings (product_id, price_fen, listed_by, listed_at, audit_seq)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (product_id) DO UPDATE SET price_fen = excluded.price_fen,
                listed_by = excluded.listed_by, listed_at = excluded.listed_at,
                audit_seq = excluded.audit_seq",
            params![product_id.as_str(), price.0, actor, now, seq],
        )?;
        Ok(Listing {
            product_id: product.id,
            operator: product.operator,
            template_id: product.template_id,
            rows: product.rows,
            price,
            listed_by: actor.to_string(),
            listed_at: now.clone(),
        })
    })
}

/// Products for sale and not recalled, oldest listing first.
pub fn offers(conn: &Connection) -> Result<Vec<Listing>> {
    query_rows(
        conn,
        &format!(
            "SELECT {LISTING_COLUMNS} FROM listings l JOIN products p ON p.id = l.product_id
         WHERE NOT EXISTS (SELECT 1 FROM recalls r WHERE r.product_id = l.product_id)
         ORDER BY l.listed_at, l.product_id"
        ),
        [],
        row_to_listing,
    )
}

const PURCHASE_COLUMNS: &str = "u.id, u.product_id, u.buyer, p.operator, u.price_fen,
    u.provider_bp, u.platform_bp, u.operator_bp, u.at, u.audit_seq, lp.id, r.reason, r.at";
const PURCHASE_FROM: &str = "purchases u JOIN products p ON p.id = u.product_id
    LEFT JOIN ledger_postings lp ON lp.source_kind = 'purchase' AND lp.source_id = u.id
    LEFT JOIN recalls r ON r.product_id = u.product_id";

fn row_to_purchase(row: &rusqlite::Row<'_>) -> rusqlite::Result<Purchase> {
    Ok(Purchase {
        id: row.get(0)?,
        product_id: row.get(1)?,
        buyer: row.get(2)?,
        operator: row.get(3)?,
        price: Fen(row.get(4)?),
        shares: Shares {
            provider_bp: row.get(5)?,
            platform_bp: row.get(6)?,
            operator_bp: row.get(7)?,
        },
        at: row.get(8)?,
        audit_seq: row.get(9)?,
        posting_id: row.get(10)?,
        recalled: match (row.get(11)?, row.get(12)?) {
            (Some(reason), Some(at)) => Some(RecallNotice { reason, at }),
            _ => None,
        },
    })
}

fn find_purchase(
    conn: &Connection,
    buyer: &str,
    product_id: &ProductId,
) -> Result<Option<Purchase>> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {PURCHASE_COLUMNS} FROM {PURCHASE_FROM}
                 WHERE u.buyer = ?1 AND u.product_id = ?2"
            ),
            params![buyer, product_id.as_str()],
            row_to_purchase,
        )
        .optional()?)
}

/// A buyer's purchase of one product, if it bought it.
pub fn purchase_of(
    conn: &Connection,
    buyer: &str,
    product_id: &ProductId,
) -> Result<Option<Purchase>> {
    find_purchase(conn, buyer, product_id)
}

/// One purchase by its id, if it exists.
pub fn purchase_by_id(conn: &Connection, id: &str) -> Result<Option<Purchase>> {
    Ok(conn
        .query_row(
            &format!("SELECT {PURCHASE_COLUMNS} FROM {PURCHASE_FROM} WHERE u.id = ?1"),
            [id],
            row_to_purchase,
        )
        .optional()?)
}

/// Checks that `name` is an active buyer principal.
fn check_buyer(conn: &Connection, name: &str) -> Result<()> {
    let found: Option<(String, Option<String>)> = conn
        .query_row(
            "SELECT role, revoked_at FROM principals WHERE name = ?1",
            [name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    match found {
        Some((role, None)) if role == Role::Buyer.as_str() => Ok(()),
        Some((_, Some(_))) => Err(Error::invalid(
            "this buyer's key was revoked; ask the bureau for a new principal",
        )),
        Some(_) => Err(Error::invalid(
            "only a buyer principal can buy products; ask the bureau to add you as a buyer",
        )),
        None => Err(Error::not_found("buyer", name)),
    }
}

/// Buys a listed, not recalled product for `buyer` at its listed price and posts the sale to
/// the ledger in the same transaction. Buying a product the buyer already bought returns that
/// purchase and charges nothing.
pub fn purchase(store: &mut Store, buyer: &str, product_id: &ProductId) -> Result<Purchase> {
    let now = clock::format(clock::now());
    store.write(|tx| {
        check_buyer(tx, buyer)?;
        let product = products::get(tx, product_id)?;
        refuse_recalled(&product)?;
        if let Some(existing) = find_purchase(tx, buyer, product_id)? {
            return Ok(existing);
        }
        let Some(listing) = listing(tx, product_id)? else {
            return Err(Error::invalid(format!(
                "product {} is not for sale; its operator or the bureau must list it first",
                product.id
            )));
        };
        let shares = prices::current(tx)?.shares;
        let id = PurchaseId::random();
        let sale = Sale {
            purchase_id: id.to_string(),
            buyer: buyer.to_string(),
            operator: product.operator.clone(),
            price: listing.price,
            shares,
            at: now.clone(),
        };
        // The sale's ledger lines are audited with it, so an edited line is found.
        let lines = ledger::sale_lines(tx, &sale, &product.job_id)?;
        let seq = audit::append(
            tx,
            buyer,
            product_id.as_str(),
            audit::Event::ProductPurchased {
                purchase: &id,
                price: listing.price,
                shares,
                ledger_lines: &lines,
            },
        )?;
        tx.execute(
            "INSERT INTO purchases (id, product_id, buyer, price_fen, provider_bp, platform_bp,
                operator_bp, at, audit_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                id.as_str(),
                product_id.as_str(),
                buyer,
                listing.price.0,
                shares.provider_bp,
                shares.platform_bp,
                shares.operator_bp,
                now,
                seq
            ],
        )?;
        let posting_id = ledger::post_sale(tx, &sale, &product.job_id, seq)?;
        Ok(Purchase {
            id: id.to_string(),
            product_id: product.id,
            buyer: buyer.to_string(),
            operator: product.operator,
            price: listing.price,
            shares,
            at: now.clone(),
            audit_seq: seq,
            posting_id,
            // A recalled product cannot be bought (see `refuse_recalled`).
            recalled: None,
        })
    })
}

/// Checks that `buyer` may download `product_id` now: it bought it and it is not recalled.
/// Returns the purchase.
pub fn authorize_download(
    conn: &Connection,
    buyer: &str,
    product_id: &ProductId,
) -> Result<Purchase> {
    let product = products::get(conn, product_id)?;
    refuse_recalled(&product)?;
    find_purchase(conn, buyer, product_id)?.ok_or_else(|| {
        Error::invalid(format!(
            "product {} can only be downloaded by a buyer who bought it; buy it first",
            product.id
        ))
    })
}

/// Records (and audits) one download of `file_name` by `actor`, after checking again, inside
/// the transaction, that the actor may download it.
pub fn record_download(
    store: &mut Store,
    actor: &str,
    product_id: &ProductId,
    file_name: &str,
) -> Result<Download> {
    if !DOWNLOADABLE_FILES.contains(&file_name) {
        return Err(Error::invalid(format!(
            "a product's downloadable files are {}; name one of them",
            DOWNLOADABLE_FILES.join(", ")
        )));
    }
    let now = clock::format(clock::now());
    store.write(|tx| {
        let purchase = authorize_download(tx, actor, product_id)?;
        let seq = audit::append(
            tx,
            actor,
            product_id.as_str(),
            audit::Event::ProductDownloaded {
                file: file_name,
                by: audit::Downloader::Buyer {
                    purchase: &purchase.id,
                },
            },
        )?;
        tx.execute(
            "INSERT INTO downloads (product_id, actor, file_name, at, audit_seq)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![product_id.as_str(), actor, file_name, now, seq],
        )?;
        Ok(Download {
            id: tx.last_insert_rowid(),
            product_id: product_id.to_string(),
            actor: actor.to_string(),
            file_name: file_name.to_string(),
            at: now.clone(),
            audit_seq: seq,
        })
    })
}

/// Recalls a product (the bureau): from now on it cannot be listed, bought or downloaded.
/// Returns the recall with the buyers who bought it, so they can be told.
pub fn recall(store: &mut Store, product_id: &ProductId, reason: &str) -> Result<Recall> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > RECALL_REASON_BYTES_MAX {
        return Err(Error::invalid(format!(
            "say why the product is recalled in 1–{RECALL_REASON_BYTES_MAX} bytes (--reason)"
        )));
    }
    let now = clock::format(clock::now());
    store.write(|tx| {
        let product = products::get(tx, product_id)?;
        if product.recalled {
            return Err(Error::invalid(format!(
                "product {} is already recalled",
                product.id
            )));
        }
        let buyers = buyers_of(tx, product_id)?;
        let seq = audit::append(
            tx,
            "bureau",
            product_id.as_str(),
            audit::Event::ProductRecalled {
                reason,
                buyers: &buyers,
            },
        )?;
        tx.execute(
            "INSERT INTO recalls (product_id, reason, recalled_by, at, audit_seq)
             VALUES (?1, ?2, 'bureau', ?3, ?4)",
            params![product_id.as_str(), reason, now, seq],
        )?;
        Ok(Recall {
            product_id: product.id,
            operator: product.operator,
            reason: reason.to_string(),
            recalled_by: "bureau".to_string(),
            at: now.clone(),
            buyers,
        })
    })
}

/// The buyers who bought a product, by name.
pub fn buyers_of(conn: &Connection, product_id: &ProductId) -> Result<Vec<String>> {
    query_rows(
        conn,
        "SELECT buyer FROM purchases WHERE product_id = ?1 ORDER BY buyer",
        [product_id.as_str()],
        |row| row.get(0),
    )
}

/// A buyer's purchases, oldest first.
pub fn purchases_of(conn: &Connection, buyer: &str) -> Result<Vec<Purchase>> {
    purchases_where(conn, Some(buyer))
}

/// Every purchase by every buyer (the bureau's view), oldest first.
pub fn all_purchases(conn: &Connection) -> Result<Vec<Purchase>> {
    purchases_where(conn, None)
}

fn purchases_where(conn: &Connection, buyer: Option<&str>) -> Result<Vec<Purchase>> {
    query_rows(
        conn,
        &format!(
            "SELECT {PURCHASE_COLUMNS} FROM {PURCHASE_FROM} WHERE ?1 IS NULL OR u.buyer = ?1
         ORDER BY u.at, u.id"
        ),
        [buyer],
        row_to_purchase,
    )
}

/// Records (and audits) a download by the product's operator or the bureau, who need no
/// purchase; buyers go through [`record_download`].
pub fn record_owner_download(
    store: &mut Store,
    actor: &str,
    product_id: &ProductId,
    file_name: &str,
    from_byte: u64,
) -> Result<()> {
    store.write(|tx| {
        audit::append(
            tx,
            actor,
            product_id.as_str(),
            audit::Event::ProductDownloaded {
                file: file_name,
                by: audit::Downloader::Owner { from_byte },
            },
        )?;
        Ok(())
    })
}

/// Every recorded download of a product, oldest first.
pub fn downloads_of(conn: &Connection, product_id: &ProductId) -> Result<Vec<Download>> {
    query_rows(
        conn,
        "SELECT id, product_id, actor, file_name, at, audit_seq FROM downloads
         WHERE product_id = ?1 ORDER BY id",
        [product_id.as_str()],
        |row| {
            Ok(Download {
                id: row.get(0)?,
                product_id: row.get(1)?,
                actor: row.get(2)?,
                file_name: row.get(3)?,
                at: row.get(4)?,
                audit_seq: row.get(5)?,
            })
        },
    )
}

/// The recall of a product, if it was recalled.
pub fn recall_of(conn: &Connection, product_id: &ProductId) -> Result<Option<Recall>> {
    let found: Option<(String, String, String, String)> = conn
        .query_row(
            "SELECT r.reason, r.recalled_by, r.at, p.operator FROM recalls r
             JOIN products p ON p.id = r.product_id WHERE r.product_id = ?1",
            [product_id.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()?;
    let Some((reason, recalled_by, at, operator)) = found else {
        return Ok(None);
    };
    Ok(Some(Recall {
        product_id: product_id.to_string(),
        operator,
        reason,
        recalled_by,
        at,
        buyers: buyers_of(conn, product_id)?,
    }))
}
