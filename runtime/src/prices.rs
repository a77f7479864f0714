//! The price book: what the bureau charges for reading data and how a product's sale price is
//! shared.
//!
//! The bureau sets prices; operators and buyers only pay them. A price book version holds
//!
//! - the **rows fee**: fen per million rows a released run scanned, and
//! - the **sale shares**: how a product's sale price is split between the providers whose
//!   datasets the product was computed from, the platform and the operator who made it, in
//!   basis points that sum to exactly [`BASIS_POINTS_TOTAL`].
//!
//! The **per-run fee** is not here: it belongs to one template, so the bureau pins it when it
//! approves the template (`templates::Approval::price_per_run`), next to the template's ε and k.
//! A released run's meter price is therefore
//!
//! ```text
//! price = per-run fee of its template + ⌊rows_scanned × fee_per_million_rows / 1 000 000⌋
//! ```
//!
//! rounded down to the whole fen (the operator is never charged for a fraction of a fen).
//! Runs that were rejected, failed, or reused an earlier product are not charged at all.
//!
//! Versions are append-only (SQLite triggers refuse UPDATE and DELETE on `price_book`): a
//! version applies from the instant it was set until the next one, so every past charge can
//! be explained by the version that was in force. A store where the bureau never set prices
//! uses [`PriceBook::default_book`]: no rows fee, and shares of 40 % provider, 20 % platform
//! and 40 % operator.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::Fen;
use crate::store::{Store, query_rows};
use crate::{audit, clock};

/// The whole of a sale price, in basis points (1 bp = 0.01 %).
pub const BASIS_POINTS_TOTAL: i64 = 10_000;
/// Rows in the unit the rows fee is priced per.
pub const ROWS_PER_PRICE_UNIT: i64 = 1_000_000;
/// The highest rows fee the bureau may set, in fen per million rows (¥1,000,000). It bounds
/// a typing mistake, not a policy.
pub const FEE_PER_MILLION_ROWS_FEN_MAX: i64 = 100_000_000;
/// The rows fee of a store whose price book was never set, in fen per million rows.
pub const DEFAULT_FEE_PER_MILLION_ROWS_FEN: i64 = 0;
/// The sale shares of a store whose price book was never set.
pub const DEFAULT_SHARES: Shares = Shares {
    provider_bp: 4_000,
    platform_bp: 2_000,
    operator_bp: 4_000,
};

/// How a sale price is split, in basis points of the price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shares {
    /// All providers together; split between them by the rows their datasets contributed.
    pub provider_bp: i64,
    /// The platform; it also receives every fen that rounding leaves over.
    pub platform_bp: i64,
    /// The operator who made the product.
    pub operator_bp: i64,
}

impl Shares {
    /// Checks that every share is non-negative and that they sum to [`BASIS_POINTS_TOTAL`],
    /// so no sale can hand out more or less than its price.
    pub fn check(&self) -> Result<()> {
        if self.provider_bp < 0 || self.platform_bp < 0 || self.operator_bp < 0 {
            return Err(Error::invalid(
                "every share must be 0 or more basis points (--provider-bp, --platform-bp, --operator-bp)",
            ));
        }
        let sum = self.provider_bp + self.platform_bp + self.operator_bp;
        if sum != BASIS_POINTS_TOTAL {
            return Err(Error::invalid(format!(
                "the provider, platform and operator shares add up to {sum} basis points; \
                 make them add up to exactly {BASIS_POINTS_TOTAL} (100 %)"
            )));
        }
        Ok(())
    }
}

/// One version of the price book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceBook {
    /// 0 for the built-in defaults, then 1, 2, … in the order the bureau set them.
    pub version: i64,
    pub fee_per_million_rows: Fen,
    pub shares: Shares,
    /// The rate at which the asset register capitalises a dataset's trailing-twelve-month
    /// revenue into its value, in basis points (1000: 10 %, a value of ten years' revenue).
    pub capitalisation_rate_bp: i64,
    /// When this version started to apply; `None` for the defaults (they apply from the start).
    pub set_at: Option<String>,
    pub set_by: Option<String>,
}

impl PriceBook {
    /// The documented defaults (see the module docs).
    pub fn default_book() -> Self {
        Self {
            version: 0,
            fee_per_million_rows: Fen(DEFAULT_FEE_PER_MILLION_ROWS_FEN),
            shares: DEFAULT_SHARES,
            capitalisation_rate_bp: DEFAULT_CAPITALISATION_RATE_BP,
            set_at: None,
            set_by: None,
        }
    }

    /// The rows fee for a run that scanned `rows` rows, rounded down to the fen.
    pub fn rows_fee(&self, rows: u64) -> Result<Fen> {
        let fee = i128::from(rows) * i128::from(self.fee_per_million_rows.0)
            / i128::from(ROWS_PER_PRICE_UNIT);
        i64::try_from(fee).map(Fen).map_err(|_| {
            Error::Resources("the rows fee of this run is larger than the ledger can hold".into())
        })
    }
}

/// What the bureau gives to set a new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceRequest {
    pub fee_per_million_rows_fen: i64,
    pub shares: Shares,
    /// See [`PriceBook::capitalisation_rate_bp`].
    pub capitalisation_rate_bp: i64,
}

/// The capitalisation rate of the built-in price book, in basis points (10 %).
pub const DEFAULT_CAPITALISATION_RATE_BP: i64 = 1_000;

const COLUMNS: &str = "version, fee_per_million_rows_fen, provider_bp, platform_bp, operator_bp, set_at, set_by, capitalisation_rate_bp";

fn row_to_book(row: &rusqlite::Row<'_>) -> rusqlite::Result<PriceBook> {
    Ok(PriceBook {
        version: row.get(0)?,
        fee_per_million_rows: Fen(row.get(1)?),
        shares: Shares {
            provider_bp: row.get(2)?,
            platform_bp: row.get(3)?,
            operator_bp: row.get(4)?,
        },
        set_at: Some(row.get(5)?),
        set_by: Some(row.get(6)?),
        capitalisation_rate_bp: row.get(7)?,
    })
}

/// The version in force now.
pub fn current(conn: &Connection) -> Result<PriceBook> {
    at(conn, &clock::format(clock::now()))
}

/// The version in force at `instant` (RFC 3339, UTC, as Veil records times): the last one set
/// at or before it, or the defaults.
pub fn at(conn: &Connection, instant: &str) -> Result<PriceBook> {
    let book = conn
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM price_book WHERE set_at <= ?1 ORDER BY version DESC LIMIT 1"
            ),
            [instant],
            row_to_book,
        )
        .optional()?;
    Ok(book.unwrap_or_else(PriceBook::default_book))
}

/// Every version the bureau set, oldest first (the defaults are not listed).
pub fn history(conn: &Connection) -> Result<Vec<PriceBook>> {
    query_rows(
        conn,
        &format!("SELECT {COLUMNS} FROM price_book ORDER BY version"),
        [],
        row_to_book,
    )
}

/// Sets a new version, in force from now on, and audits it.
pub fn set(store: &mut Store, actor: &str, request: &PriceRequest) -> Result<PriceBook> {
    if !(0..=FEE_PER_MILLION_ROWS_FEN_MAX).contains(&request.fee_per_million_rows_fen) {
        return Err(Error::invalid(format!(
            "--per-million-rows-fen must be between 0 and {FEE_PER_MILLION_ROWS_FEN_MAX}"
        )));
    }
    request.shares.check()?;
    if !(1..=BASIS_POINTS_TOTAL).contains(&request.capitalisation_rate_bp) {
        return Err(Error::invalid(format!(
            "--capitalisation-rate-bp is {}; give 1 to {BASIS_POINTS_TOTAL} basis points (1000 = 10 %)",
            request.capitalisation_rate_bp
        )));
    }
    let now = clock::format(clock::now());
    store.write(|tx| {
        let previous: Option<(i64, String)> = tx
            .query_row(
                "SELECT version, set_at FROM price_book ORDER BY version DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        if let Some((_, set_at)) = &previous
            && set_at.as_str() > now.as_str()
        {
            return Err(Error::invalid(
                "the last price book version was set later than the platform clock says it is now; \
                 fix the clock before setting prices",
            ));
        }
        let version = previous.map_or(1, |(v, _)| v + 1);
        let seq = audit::append(
            tx,
            actor,
            &format!("price-book-{version}"),
            audit::Event::PriceSet {
                version,
                fee_per_million_rows_fen: request.fee_per_million_rows_fen,
                shares: request.shares,
                capitalisation_rate_bp: request.capitalisation_rate_bp,
            },
        )?;
        tx.execute(
            "INSERT INTO price_book (version, fee_per_million_rows_fen, provider_bp, platform_bp,
                operator_bp, set_at, set_by, audit_seq, capitalisation_rate_bp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                version,
                request.fee_per_million_rows_fen,
                request.shares.provider_bp,
                request.shares.platform_bp,
                request.shares.operator_bp,
                now,
                actor,
                seq,
                request.capitalisation_rate_bp
            ],
        )?;
        Ok(PriceBook {
            version,
            fee_per_million_rows: Fen(request.fee_per_million_rows_fen),
            shares: request.shares,
            capitalisation_rate_bp: request.capitalisation_rate_bp,
            set_at: Some(now.clone()),
            set_by: Some(actor.to_string()),
        })
    })
}

/// The meter price of a released run: the template's per-run fee plus the rows fee of the
/// version in force now (see the module docs for the rule).
pub fn run_price(conn: &Connection, per_run_fee: Fen, rows_scanned: u64) -> Result<Fen> {
    let rows_fee = current(conn)?.rows_fee(rows_scanned)?;
    per_run_fee
        .0
        .checked_add(rows_fee.0)
        .map(Fen)
        .ok_or_else(|| {
            Error::Resources("the price of this run is larger than the ledger can hold".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::init(&dir.path().join("store")).expect("store");
        (dir, store)
    }

    #[test]
    fn a_fresh_store_uses_the_documented_defaults() {
        let (_dir, store) = store();
        let book = current(store.conn()).expect("book");
        assert_eq!(book, PriceBook::default_book());
        assert_eq!(book.shares.provider_bp, 4_000);
        assert!(book.shares.check().is_ok());
    }

    #[test]
    fn the_rows_fee_rounds_down() {
        let book = PriceBook {
            fee_per_million_rows: Fen(250),
            ..PriceBook::default_book()
        };
        assert_eq!(book.rows_fee(0).expect("fee"), Fen(0));
        assert_eq!(book.rows_fee(3_999).expect("fee"), Fen(0));
        assert_eq!(book.rows_fee(4_000).expect("fee"), Fen(1));
        assert_eq!(book.rows_fee(2_000_000).expect("fee"), Fen(500));
        assert_eq!(book.rows_fee(2_003_999).expect("fee"), Fen(500));
        let huge = PriceBook {
            fee_per_million_rows: Fen(FEE_PER_MILLION_ROWS_FEN_MAX),
            ..PriceBook::default_book()
        };
        assert!(matches!(huge.rows_fee(u64::MAX), Err(Error::Resources(_))));
    }

    #[test]
    fn shares_must_sum_to_the_whole() {
        let (_dir, mut store) = store();
        let bad = PriceRequest {
            fee_per_million_rows_fen: 10,
            shares: Shares {
                provider_bp: 5_000,
                platform_bp: 2_000,
                operator_bp: 4_000,
            },
            capitalisation_rate_bp: DEFAULT_CAPITALISATION_RATE_BP,
        };
        let err = set(&mut store, "bureau", &bad).expect_err("must refuse");
        assert!(err.to_string().contains("11000"), "{err}");
        let negative = PriceRequest {
            fee_per_million_rows_fen: 10,
            shares: Shares {
                provider_bp: -1,
                platform_bp: 6_001,
                operator_bp: 4_000,
            },
            capitalisation_rate_bp: DEFAULT_CAPITALISATION_RATE_BP,
        };
        assert!(set(&mut store, "bureau", &negative).is_err());
        assert!(history(store.conn()).expect("history").is_empty());
    }

    #[test]
    fn versions_apply_from_when_they_are_set_and_never_change() {
        let (_dir, mut store) = store();
        let request = PriceRequest {
            fee_per_million_rows_fen: 120,
            shares: Shares {
                provider_bp: 5_000,
                platform_bp: 1_000,
                operator_bp: 4_000,
            },
            capitalisation_rate_bp: DEFAULT_CAPITALISATION_RATE_BP,
        };
        let first = set(&mut store, "bureau", &request).expect("set");
        assert_eq!(first.version, 1);
        let second = set(
            &mut store,
            "bureau",
            &PriceRequest {
                fee_per_million_rows_fen: 130,
                ..request.clone()
            },
        )
        .expect("set");
        assert_eq!(second.version, 2);
        assert_eq!(current(store.conn()).expect("current"), second);
        assert_eq!(
            at(store.conn(), "2000-01-01T00:00:00Z").expect("at"),
            PriceBook::default_book()
        );
        assert_eq!(history(store.conn()).expect("history").len(), 2);
        let err = store
            .conn()
            .execute("UPDATE price_book SET fee_per_million_rows_fen = 0", [])
            .expect_err("append-only");
        assert!(err.to_string().contains("append-only"), "{err}");
        assert!(store.conn().execute("DELETE FROM price_book", []).is_err());
    }
}
