//! The asset register (数据资产登记, Order 266 art. 7-8 建卡立账; 2024 measures art. 18-19): one
//! card per dataset with its provider, classification and sharing, update cadence, versions,
//! the grants that cover it, its use per month, the products derived from it, what it earned
//! its provider, and a valuation — and the register of all cards, exported as CSV and JSON for
//! the finance department.
//!
//! **Valuation method** (stated on every card): the provider's net revenue from the dataset
//! over the trailing twelve months (rows fees and sale shares, less refunds — the ledger's own
//! lines that name the dataset) capitalised at the rate the bureau sets in the price book:
//! `value = ttm_revenue × 10000 / capitalisation_rate_bp`, rounded down to the fen. At the
//! default 1000 bp (10 %) a dataset is valued at ten years of its current revenue. A dataset
//! that earned nothing in the year is valued at 0: the method values use, not cost.
//!
//! Every figure comes from a table another module owns, through that module's functions; this
//! module writes nothing.

use serde::{Deserialize, Serialize};

use crate::catalog::{self, Dataset, Version};
use crate::error::{Error, Result};
use crate::ids::Fen;
use crate::ledger::{self, Account};
use crate::store::Store;
use crate::{budget, clock, grants, prices, products};

/// Days of the trailing window the valuation sums revenue over.
pub const TRAILING_DAYS: i64 = 365;

/// The method every card states.
pub const VALUATION_METHOD: &str = "trailing-twelve-month provider revenue (rows fees and sale shares, less refunds) capitalised at the price book's rate: value = revenue × 10000 / rate_bp, rounded down to the fen";

/// A grant that covers the dataset, as its card lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoveringGrant {
    pub id: String,
    pub operator: String,
    pub purpose: String,
    pub valid_from: String,
    pub valid_to: String,
}

/// One dataset's asset card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetCard {
    pub dataset_id: String,
    pub name: String,
    pub provider: String,
    pub classification_level: u8,
    pub sharing: String,
    /// How often the provider delivers a new version, as the policy states it.
    pub update_cadence: Option<String>,
    pub acquired_on: String,
    pub registered_at: String,
    pub versions: Vec<Version>,
    pub grants: Vec<CoveringGrant>,
    /// Jobs and ε per month (every job that reserved budget on it, whatever its end).
    pub use_per_month: Vec<budget::MonthUse>,
    pub jobs: u64,
    /// Products made from it (recalled ones included: they were made).
    pub products: Vec<String>,
    /// What its provider earned from it to date, net of refunds.
    pub provider_revenue_fen: Fen,
    /// The same over the trailing twelve months, the valuation's base.
    pub trailing_revenue_fen: Fen,
    pub capitalisation_rate_bp: i64,
    pub value_fen: Fen,
    pub valuation_method: String,
    /// When the card was drawn up (the figures are as of then).
    pub as_of: String,
}

/// The card of one dataset (by name or id).
pub fn card(store: &Store, name_or_id: &str) -> Result<AssetCard> {
    let dataset = catalog::get(store, name_or_id)?;
    card_of(store, &dataset)
}

/// Every dataset's card, by name: the register.
pub fn register(store: &Store) -> Result<Vec<AssetCard>> {
    catalog::list(store)?
        .iter()
        .map(|d| card_of(store, d))
        .collect()
}

fn card_of(store: &Store, dataset: &Dataset) -> Result<AssetCard> {
    let conn = store.conn();
    let id = dataset.id.as_str();
    let now = clock::now();
    let since = clock::format(now - chrono::Duration::days(TRAILING_DAYS));
    let account = Account::Provider(dataset.policy.provider.clone()).as_text();
    let provider_revenue = ledger::earned_from_dataset(conn, &account, id, None)?;
    let trailing = ledger::earned_from_dataset(conn, &account, id, Some(&since))?;
    let rate = prices::current(conn)?.capitalisation_rate_bp;
    let jobs = budget::jobs_of_dataset(conn, id)?;
    let products = products::list(conn)?
        .into_iter()
        .filter(|p| jobs.binary_search(&p.job_id).is_ok())
        .map(|p| p.id)
        .collect();
    let grants = grants::list(store)?
        .into_iter()
        .filter(|g| g.datasets.iter().any(|d| d.as_str() == id))
        .map(|g| CoveringGrant {
            id: g.id.to_string(),
            operator: g.operator,
            purpose: g.purpose,
            valid_from: g.valid_from.to_string(),
            valid_to: g.valid_to.to_string(),
        })
        .collect();
    Ok(AssetCard {
        dataset_id: id.to_string(),
        name: dataset.name.clone(),
        provider: dataset.policy.provider.clone(),
        classification_level: dataset.policy.classification_level,
        sharing: serde_json::to_value(dataset.policy.sharing)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        update_cadence: dataset.policy.update_cadence.clone(),
        acquired_on: dataset.policy.acquired_on.clone(),
        registered_at: dataset.registered_at.clone(),
        versions: catalog::versions(store, dataset)?,
        grants,
        use_per_month: budget::use_of_dataset(conn, id)?,
        jobs: jobs.len() as u64,
        products,
        provider_revenue_fen: provider_revenue,
        value_fen: capitalised(trailing, rate)?,
        trailing_revenue_fen: trailing,
        capitalisation_rate_bp: rate,
        valuation_method: VALUATION_METHOD.to_string(),
        as_of: clock::format(now),
    })
}

/// `revenue × 10000 / rate_bp`, rounded down to the fen; a negative revenue (refunds beyond
/// the year's sales) values the dataset at 0.
fn capitalised(revenue: Fen, rate_bp: i64) -> Result<Fen> {
    if rate_bp <= 0 {
        return Err(Error::internal("a capitalisation rate of 0 or less"));
    }
    let value =
        i128::from(revenue.0.max(0)) * i128::from(prices::BASIS_POINTS_TOTAL) / i128::from(rate_bp);
    i64::try_from(value).map(Fen).map_err(|_| {
        Error::Resources("a dataset's value is larger than the ledger can hold".into())
    })
}

/// The header of the register's CSV export.
pub const REGISTER_CSV_HEADER: &str = "dataset_id,name,provider,classification_level,sharing,update_cadence,acquired_on,registered_at,versions,latest_version_blake3,latest_version_rows,grants,jobs,products,provider_revenue_fen,trailing_revenue_fen,capitalisation_rate_bp,value_fen,as_of";

/// The register as CSV: one row per dataset, money in integer fen, text quoted where needed.
pub fn register_csv(cards: &[AssetCard]) -> String {
    let mut out = String::from(REGISTER_CSV_HEADER);
    out.push('\n');
    for c in cards {
        let latest = c.versions.last();
        let fields = [
            c.dataset_id.clone(),
            c.name.clone(),
            c.provider.clone(),
            c.classification_level.to_string(),
            c.sharing.clone(),
            c.update_cadence.clone().unwrap_or_default(),
            c.acquired_on.clone(),
            c.registered_at.clone(),
            c.versions.len().to_string(),
            latest.map(|v| v.content_blake3.clone()).unwrap_or_default(),
            latest.map(|v| v.rows.to_string()).unwrap_or_default(),
            c.grants.len().to_string(),
            c.jobs.to_string(),
            c.products.len().to_string(),
            c.provider_revenue_fen.0.to_string(),
            c.trailing_revenue_fen.0.to_string(),
            c.capitalisation_rate_bp.to_string(),
            c.value_fen.0.to_string(),
            c.as_of.clone(),
        ];
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// A CSV field, quoted (with doubled quotes) when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revenue_is_capitalised_at_the_rate_rounded_down() {
        assert_eq!(capitalised(Fen(400), 1_000).expect("value"), Fen(4_000));
        assert_eq!(capitalised(Fen(401), 3_000).expect("value"), Fen(1_336));
        assert_eq!(capitalised(Fen(-50), 1_000).expect("value"), Fen(0));
        assert!(capitalised(Fen(1), 0).is_err());
    }

    #[test]
    fn csv_fields_with_commas_and_quotes_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
