//! What an audit entry records: one typed [`Event`] per [`Kind`], and the one place that says
//! how each is stored.
//!
//! An entry's `details` column holds the event as JSON, and its keyed hash covers that text, so
//! the stored shape of each kind is a format: `veil audit verify` and its cross-checks read it
//! back (`cross_check`), and entries written by earlier versions must read the same way.
//! [`Event::details`] spells each shape out in full; the tests below pin the exact text of
//! every kind, so a change to a field's type cannot change what new entries store unnoticed.
//!
//! Details never hold a data value from inside the domain: names, ids, digests, counts the
//! bureau set (ε, prices, limits), rule codes, and a failure's category.

use chrono::NaiveDate;
use serde_json::{Value, json};

use veil_gate::job::WasmUsage;
use veil_gate::rules::Refusal;

use super::Kind;
use crate::catalog::Dataset;
use crate::ids::{DatasetId, Fen, GrantId, JobId, ProductId, PurchaseId, TemplateId};
use crate::ledger::{self, LineDraft};
use crate::prices::Shares;
use crate::principals::Role;
use crate::settlement::StatementFile;
use crate::templates::Approval;

/// One state change, as its audit entry records it. The entry's actor and subject (an id) are
/// given beside it to [`append`](super::append).
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A new store; its subject is `store`.
    StoreInitialized {
        /// The platform's Ed25519 public key, hex.
        platform_public_key: &'a str,
    },
    DatasetRegistered {
        name: &'a str,
        provider: &'a str,
        classification_level: u8,
        acquired_on: &'a str,
        content_blake3: &'a str,
        rows: u64,
    },
    /// A new version of a registered dataset: a new file under the same policy and id.
    DatasetVersionRegistered {
        version: u32,
        content_blake3: &'a str,
        rows: u64,
    },
    /// A correction request (its text stays in the request; the entry names what it is about).
    CorrectionFiled {
        target_kind: &'a str,
        target_id: &'a str,
        dataset_id: &'a str,
    },
    CorrectionAnswered {
        accepted: bool,
        corrected_in_version: Option<u32>,
    },
    GrantCreated {
        operator: &'a str,
        datasets: &'a [DatasetId],
        purpose: &'a str,
        valid_from: NaiveDate,
        valid_to: NaiveDate,
        epsilon_per_month: f64,
        delta_per_month: f64,
        /// `destroy`, `archive` or `return`.
        disposition: &'a str,
        /// Who owns derived products: `operator`, `bureau` or `shared`.
        ownership: &'a str,
    },
    /// A grant's disposition ran after its term, over these products.
    GrantDisposed {
        disposition: &'a str,
        products: &'a [String],
    },
    GrantRequested {
        /// Dataset names or ids as the operator asked for them.
        datasets: &'a [String],
        purpose: &'a str,
        epsilon_per_month: f64,
    },
    GrantRequestApproved {
        /// The grant the approval created.
        grant: &'a str,
    },
    GrantRequestRejected {
        reason: &'a str,
    },
    ModuleStored {
        bytes: usize,
    },
    TemplateSubmitted {
        name: &'a str,
    },
    TemplateApproved {
        approval: &'a Approval,
    },
    TemplateRejected {
        reason: &'a str,
    },
    TemplateRevoked {
        reason: &'a str,
    },
    JobQueued {
        template: &'a TemplateId,
        params: &'a [(String, String)],
    },
    JobStarted {
        template: &'a TemplateId,
        params: &'a [(String, String)],
    },
    JobCancelled {
        during: Phase,
    },
    BudgetReserved {
        grant: &'a GrantId,
        /// The budget period, `YYYY-MM`.
        period: &'a str,
        epsilon: f64,
        delta: f64,
        datasets: &'a [Dataset],
    },
    JobReleased {
        product: &'a ProductId,
        how: Release<'a>,
    },
    JobRejected {
        refusal: &'a Refusal,
    },
    JobFailed {
        /// What the operator was told (a fixed sentence; see `jobs`).
        failure: &'a str,
        /// What went wrong, for the bureau only: a category or the platform's own error,
        /// never a data value. `None` when the job ended without running (recovery).
        category: Option<&'a str>,
    },
    ProductReleased {
        job: &'a JobId,
        manifest_blake3: &'a str,
        rows: usize,
    },
    MeterRecorded {
        /// The job's end, as the meter record stores it.
        end_state: &'a str,
        price: Fen,
        epsilon: f64,
        /// The lines the record posts to the ledger (none for a run that is not charged).
        ledger_lines: &'a [LineDraft],
    },
    PrincipalAdded {
        role: Role,
        name: &'a str,
    },
    PrincipalRevoked,
    /// The principal's key was replaced: the old key stopped working in the same transaction.
    /// The new key is never recorded, only when it expires (none: it does not).
    PrincipalKeyRotated {
        key_expires_at: Option<&'a str>,
    },
    PriceSet {
        version: i64,
        fee_per_million_rows_fen: i64,
        shares: Shares,
        /// The asset register's capitalisation rate; versions set before it existed left it
        /// out, and the rate in force for them was the default.
        capitalisation_rate_bp: i64,
    },
    ProductListed {
        price: Fen,
        /// The price it was listed at before, when this changes a listing.
        previous_price: Option<Fen>,
    },
    ProductPurchased {
        purchase: &'a PurchaseId,
        price: Fen,
        shares: Shares,
        ledger_lines: &'a [LineDraft],
    },
    ProductDownloaded {
        file: &'a str,
        by: Downloader<'a>,
    },
    ProductRecalled {
        reason: &'a str,
        /// The buyers who bought it, by name, so they can be told.
        buyers: &'a [String],
    },
    /// The bureau froze the platform, a dataset, an operator or a grant (see `freezes`); its
    /// subject is the freeze id.
    FreezeImposed {
        /// `platform`, `dataset`, `operator` or `grant`.
        scope: &'a str,
        /// The dataset id, operator name or grant id; empty for the platform.
        target: &'a str,
        reason: &'a str,
        block_downloads: bool,
    },
    /// The bureau lifted a freeze; its subject is the freeze id.
    FreezeLifted {
        scope: &'a str,
        target: &'a str,
        reason: &'a str,
    },
    PeriodSettled {
        statements: &'a [StatementFile],
        total_debit: Fen,
        total_credit: Fen,
    },
    /// A buyer's dispute of a purchase; its subject is the dispute id.
    DisputeOpened {
        purchase: &'a str,
        product: &'a str,
        /// The buyer's own words, bounded (see `disputes`).
        reason: &'a str,
    },
    /// The bureau upheld a dispute and refunded the sale with `ledger_lines` (none when the
    /// sale posted nothing).
    DisputeUpheld {
        purchase: &'a str,
        reason: &'a str,
        /// What the refund moves: the sale's price.
        price: Fen,
        /// The sale posting the refund reverses.
        sale_posting: Option<i64>,
        ledger_lines: &'a [LineDraft],
    },
    DisputeRejected {
        purchase: &'a str,
        reason: &'a str,
    },
}

/// When a job was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Queued,
    Running,
}

/// How a released job came by its product.
#[derive(Debug, Clone, Copy)]
pub enum Release<'a> {
    /// It ran; a WASM job's real fuel, unit and fallback counts are for the bureau only.
    Ran { wasm: Option<WasmUsage> },
    /// An identical earlier job's product, returned at no cost.
    Reused { from_job: &'a str },
}

/// Who downloaded a product file.
#[derive(Debug, Clone, Copy)]
pub enum Downloader<'a> {
    /// A buyer, under its purchase.
    Buyer { purchase: &'a str },
    /// The product's operator or the bureau (no purchase), from a byte offset.
    Owner { from_byte: u64 },
}

impl Event<'_> {
    /// The kind the entry is filed under.
    pub fn kind(&self) -> Kind {
        match self {
            Self::StoreInitialized { .. } => Kind::StoreInitialized,
            Self::DatasetRegistered { .. } => Kind::DatasetRegistered,
            Self::DatasetVersionRegistered { .. } => Kind::DatasetVersionRegistered,
            Self::CorrectionFiled { .. } => Kind::CorrectionFiled,
            Self::CorrectionAnswered { .. } => Kind::CorrectionAnswered,
            Self::GrantCreated { .. } => Kind::GrantCreated,
            Self::GrantDisposed { .. } => Kind::GrantDisposed,
            Self::GrantRequested { .. } => Kind::GrantRequested,
            Self::GrantRequestApproved { .. } => Kind::GrantRequestApproved,
            Self::GrantRequestRejected { .. } => Kind::GrantRequestRejected,
            Self::ModuleStored { .. } => Kind::ModuleStored,
            Self::TemplateSubmitted { .. } => Kind::TemplateSubmitted,
            Self::TemplateApproved { .. } => Kind::TemplateApproved,
            Self::TemplateRejected { .. } => Kind::TemplateRejected,
            Self::TemplateRevoked { .. } => Kind::TemplateRevoked,
            Self::JobQueued { .. } => Kind::JobQueued,
            Self::JobStarted { .. } => Kind::JobStarted,
            Self::JobCancelled { .. } => Kind::JobCancelled,
            Self::BudgetReserved { .. } => Kind::BudgetReserved,
            Self::JobReleased { .. } => Kind::JobReleased,
            Self::JobRejected { .. } => Kind::JobRejected,
            Self::JobFailed { .. } => Kind::JobFailed,
            Self::ProductReleased { .. } => Kind::ProductReleased,
            Self::MeterRecorded { .. } => Kind::MeterRecorded,
            Self::PrincipalAdded { .. } => Kind::PrincipalAdded,
            Self::PrincipalRevoked => Kind::PrincipalRevoked,
            Self::PrincipalKeyRotated { .. } => Kind::PrincipalKeyRotated,
            Self::PriceSet { .. } => Kind::PriceSet,
            Self::ProductListed { .. } => Kind::ProductListed,
            Self::ProductPurchased { .. } => Kind::ProductPurchased,
            Self::ProductDownloaded { .. } => Kind::ProductDownloaded,
            Self::ProductRecalled { .. } => Kind::ProductRecalled,
            Self::FreezeImposed { .. } => Kind::FreezeImposed,
            Self::FreezeLifted { .. } => Kind::FreezeLifted,
            Self::PeriodSettled { .. } => Kind::PeriodSettled,
            Self::DisputeOpened { .. } => Kind::DisputeOpened,
            Self::DisputeUpheld { .. } => Kind::DisputeUpheld,
            Self::DisputeRejected { .. } => Kind::DisputeRejected,
        }
    }

    /// The entry's details, in the shape every earlier version stored for this kind (keys
    /// sorted when written; see the tests for the exact text).
    pub fn details(&self) -> Value {
        match *self {
            Self::StoreInitialized {
                platform_public_key,
            } => json!({ "platform_public_key": platform_public_key }),
            Self::GrantDisposed {
                disposition,
                products,
            } => json!({
                "disposition": disposition,
                "products": products,
            }),
            Self::CorrectionFiled {
                target_kind,
                target_id,
                dataset_id,
            } => json!({
                "target_kind": target_kind,
                "target_id": target_id,
                "dataset_id": dataset_id,
            }),
            Self::CorrectionAnswered {
                accepted,
                corrected_in_version,
            } => json!({
                "accepted": accepted,
                "corrected_in_version": corrected_in_version,
            }),
            Self::DatasetVersionRegistered {
                version,
                content_blake3,
                rows,
            } => json!({
                "version": version,
                "content_blake3": content_blake3,
                "rows": rows,
            }),
            Self::DatasetRegistered {
                name,
                provider,
                classification_level,
                acquired_on,
                content_blake3,
                rows,
            } => json!({
                "name": name,
                "provider": provider,
                "classification_level": classification_level,
                "acquired_on": acquired_on,
                "content_blake3": content_blake3,
                "rows": rows,
            }),
            Self::GrantCreated {
                operator,
                datasets,
                purpose,
                valid_from,
                valid_to,
                epsilon_per_month,
                delta_per_month,
                disposition,
                ownership,
            } => json!({
                "operator": operator,
                "datasets": datasets,
                "purpose": purpose,
                "valid_from": valid_from.to_string(),
                "valid_to": valid_to.to_string(),
                "epsilon_per_month": epsilon_per_month,
                "delta_per_month": delta_per_month,
                "disposition": disposition,
                "ownership": ownership,
            }),
            Self::GrantRequested {
                datasets,
                purpose,
                epsilon_per_month,
            } => json!({
                "datasets": datasets,
                "purpose": purpose,
                "epsilon_per_month": epsilon_per_month,
            }),
            // Both decisions have stored both keys, the one that does not apply as null.
            Self::GrantRequestApproved { grant } => json!({ "grant": grant, "reason": null }),
            Self::GrantRequestRejected { reason } => json!({ "grant": null, "reason": reason }),
            Self::ModuleStored { bytes } => json!({ "bytes": bytes }),
            Self::TemplateSubmitted { name } => json!({ "name": name }),
            Self::TemplateApproved { approval } => json!({
                "epsilon": approval.epsilon(),
                "delta": approval.delta(),
                "k": approval.k,
                "max_groups": approval.max_groups,
                "max_rows": approval.max_rows,
                "price_per_run_fen": approval.price_per_run.0,
                "wasm_fuel_per_unit": approval.wasm_fuel_per_unit,
                "wasm_memory_mib": approval.wasm_memory_mib,
            }),
            Self::TemplateRejected { reason } | Self::TemplateRevoked { reason } => {
                json!({ "reason": reason })
            }
            Self::JobQueued { template, params } | Self::JobStarted { template, params } => {
                json!({ "template": template, "params": params })
            }
            Self::JobCancelled { during } => json!({
                "while": match during {
                    Phase::Queued => "queued",
                    Phase::Running => "running",
                },
            }),
            Self::BudgetReserved {
                grant,
                period,
                epsilon,
                delta,
                datasets,
            } => json!({
                "grant": grant,
                "period": period,
                "epsilon": epsilon,
                "delta": delta,
                "datasets": datasets.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            }),
            Self::JobReleased {
                product,
                how: Release::Ran { wasm },
            } => json!({ "product": product, "wasm": wasm }),
            Self::JobReleased {
                product,
                how: Release::Reused { from_job },
            } => json!({ "product": product, "reused_from": from_job }),
            Self::JobRejected { refusal } => json!({ "rules": refusal.codes() }),
            Self::JobFailed {
                failure,
                category: None,
            } => json!({ "failure": failure }),
            Self::JobFailed {
                failure,
                category: Some(category),
            } => json!({ "failure": failure, "category": category }),
            Self::ProductReleased {
                job,
                manifest_blake3,
                rows,
            } => json!({ "job": job, "manifest_blake3": manifest_blake3, "rows": rows }),
            Self::MeterRecorded {
                end_state,
                price,
                epsilon,
                ledger_lines,
            } => json!({
                "end_state": end_state,
                "price_fen": price.0,
                "epsilon": epsilon,
                "ledger_lines": ledger::audited(ledger_lines),
            }),
            Self::PrincipalAdded { role, name } => json!({ "role": role.as_str(), "name": name }),
            Self::PrincipalRevoked => json!({}),
            Self::PrincipalKeyRotated { key_expires_at } => {
                json!({ "key_expires_at": key_expires_at })
            }
            Self::PriceSet {
                version,
                fee_per_million_rows_fen,
                shares,
                capitalisation_rate_bp,
            } => json!({
                "capitalisation_rate_bp": capitalisation_rate_bp,
                "version": version,
                "fee_per_million_rows_fen": fee_per_million_rows_fen,
                "provider_bp": shares.provider_bp,
                "platform_bp": shares.platform_bp,
                "operator_bp": shares.operator_bp,
            }),
            Self::ProductListed {
                price,
                previous_price,
            } => json!({
                "price_fen": price.0,
                "previous_price_fen": previous_price.map(|p| p.0),
            }),
            Self::ProductPurchased {
                purchase,
                price,
                shares,
                ledger_lines,
            } => json!({
                "purchase": purchase,
                "price_fen": price.0,
                "provider_bp": shares.provider_bp,
                "platform_bp": shares.platform_bp,
                "operator_bp": shares.operator_bp,
                "ledger_lines": ledger::audited(ledger_lines),
            }),
            Self::ProductDownloaded {
                file,
                by: Downloader::Buyer { purchase },
            } => json!({ "file": file, "purchase": purchase }),
            Self::ProductDownloaded {
                file,
                by: Downloader::Owner { from_byte },
            } => json!({ "file": file, "from_byte": from_byte }),
            Self::ProductRecalled { reason, buyers } => {
                json!({ "reason": reason, "buyers": buyers })
            }
            Self::FreezeImposed {
                scope,
                target,
                reason,
                block_downloads,
            } => json!({
                "scope": scope,
                "target": target,
                "reason": reason,
                "block_downloads": block_downloads,
            }),
            Self::FreezeLifted {
                scope,
                target,
                reason,
            } => json!({ "scope": scope, "target": target, "reason": reason }),
            Self::PeriodSettled {
                statements,
                total_debit,
                total_credit,
            } => json!({
                "statements": statements
                    .iter()
                    .map(|f| json!({
                        "party": f.party,
                        "csv_blake3": f.csv_blake3,
                        "json_blake3": f.json_blake3,
                    }))
                    .collect::<Vec<_>>(),
                "total_debit_fen": total_debit.0,
                "total_credit_fen": total_credit.0,
            }),
            Self::DisputeOpened {
                purchase,
                product,
                reason,
            } => json!({ "purchase": purchase, "product": product, "reason": reason }),
            Self::DisputeUpheld {
                purchase,
                reason,
                price,
                sale_posting,
                ledger_lines,
            } => json!({
                "purchase": purchase,
                "reason": reason,
                "price_fen": price.0,
                "sale_posting_id": sale_posting,
                "ledger_lines": ledger::audited(ledger_lines),
            }),
            Self::DisputeRejected { purchase, reason } => {
                json!({ "purchase": purchase, "reason": reason })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The exact text each kind stores. These strings are a format: a test that fails here
    //! means new entries would no longer read like the ones already in every store.

    use super::*;
    use crate::ledger::Account;
    use veil_gate::rules::Rule;

    fn stored(event: Event<'_>) -> String {
        event.details().to_string()
    }

    #[test]
    fn identity_and_catalog_events_store_their_established_text() {
        assert_eq!(
            stored(Event::StoreInitialized {
                platform_public_key: "ab12"
            }),
            r#"{"platform_public_key":"ab12"}"#
        );
        assert_eq!(
            stored(Event::GrantDisposed {
                disposition: "destroy",
                products: &["prod-1".to_string()]
            }),
            r#"{"disposition":"destroy","products":["prod-1"]}"#
        );
        assert_eq!(
            stored(Event::CorrectionFiled {
                target_kind: "product",
                target_id: "prod-1",
                dataset_id: "ds-1"
            }),
            r#"{"dataset_id":"ds-1","target_id":"prod-1","target_kind":"product"}"#
        );
        assert_eq!(
            stored(Event::CorrectionAnswered {
                accepted: true,
                corrected_in_version: Some(2)
            }),
            r#"{"accepted":true,"corrected_in_version":2}"#
        );
        assert_eq!(
            stored(Event::DatasetVersionRegistered {
                version: 2,
                content_blake3: "cd34",
                rows: 7
            }),
            r#"{"content_blake3":"cd34","rows":7,"version":2}"#
        );
        assert_eq!(
            stored(Event::DatasetRegistered {
                name: "social_insurance",
                provider: "shanxi-hrss",
                classification_level: 3,
                acquired_on: "2024-01-01",
                content_blake3: "c0ffee",
                rows: 2000,
            }),
            r#"{"acquired_on":"2024-01-01","classification_level":3,"content_blake3":"c0ffee","name":"social_insurance","provider":"shanxi-hrss","rows":2000}"#
        );
        assert_eq!(
            stored(Event::PrincipalAdded {
                role: Role::Operator,
                name: "ops"
            }),
            r#"{"name":"ops","role":"operator"}"#
        );
        assert_eq!(stored(Event::PrincipalRevoked), "{}");
        assert_eq!(
            stored(Event::PrincipalKeyRotated {
                key_expires_at: Some("2026-12-31T00:00:00Z")
            }),
            r#"{"key_expires_at":"2026-12-31T00:00:00Z"}"#
        );
        assert_eq!(stored(Event::ModuleStored { bytes: 42 }), r#"{"bytes":42}"#);
    }

    #[test]
    fn grant_events_store_their_established_text() {
        let datasets = [DatasetId::new("ds-1".to_string())];
        assert_eq!(
            stored(Event::GrantCreated {
                operator: "ops",
                datasets: &datasets,
                purpose: "study",
                valid_from: NaiveDate::from_ymd_opt(2025, 1, 1).expect("date"),
                valid_to: NaiveDate::from_ymd_opt(2025, 12, 31).expect("date"),
                epsilon_per_month: 2.0,
                delta_per_month: 1e-6,
                disposition: "destroy",
                ownership: "shared",
            }),
            r#"{"datasets":["ds-1"],"delta_per_month":1e-6,"disposition":"destroy","epsilon_per_month":2.0,"operator":"ops","ownership":"shared","purpose":"study","valid_from":"2025-01-01","valid_to":"2025-12-31"}"#
        );
        let asked = ["social_insurance".to_string()];
        assert_eq!(
            stored(Event::GrantRequested {
                datasets: &asked,
                purpose: "study",
                epsilon_per_month: 0.5,
            }),
            r#"{"datasets":["social_insurance"],"epsilon_per_month":0.5,"purpose":"study"}"#
        );
        assert_eq!(
            stored(Event::GrantRequestApproved { grant: "grt-1" }),
            r#"{"grant":"grt-1","reason":null}"#
        );
        assert_eq!(
            stored(Event::GrantRequestRejected { reason: "no" }),
            r#"{"grant":null,"reason":"no"}"#
        );
    }

    #[test]
    fn template_and_job_events_store_their_established_text() {
        let approval: Approval = serde_json::from_value(json!({
            "micro_epsilon": 100_000, "pico_delta": 1_000_000, "k": 5, "max_groups": 1,
            "max_rows": 1, "price_per_run": 300, "memory_mib": 256, "wall_seconds": 60,
            "wasm_fuel_per_unit": 0, "wasm_memory_mib": 16,
        }))
        .expect("an approval");
        assert_eq!(
            stored(Event::TemplateApproved {
                approval: &approval
            }),
            r#"{"delta":1e-6,"epsilon":0.1,"k":5,"max_groups":1,"max_rows":1,"price_per_run_fen":300,"wasm_fuel_per_unit":0,"wasm_memory_mib":16}"#
        );
        assert_eq!(
            stored(Event::TemplateSubmitted { name: "t" }),
            r#"{"name":"t"}"#
        );
        assert_eq!(
            stored(Event::TemplateRejected { reason: "r" }),
            r#"{"reason":"r"}"#
        );
        assert_eq!(
            stored(Event::TemplateRevoked { reason: "r" }),
            r#"{"reason":"r"}"#
        );
        let template = TemplateId::new("tpl-1".to_string());
        let params = [("born".to_string(), "1950".to_string())];
        let queued = r#"{"params":[["born","1950"]],"template":"tpl-1"}"#;
        assert_eq!(
            stored(Event::JobQueued {
                template: &template,
                params: &params
            }),
            queued
        );
        assert_eq!(
            stored(Event::JobStarted {
                template: &template,
                params: &params
            }),
            queued
        );
        assert_eq!(
            stored(Event::JobCancelled {
                during: Phase::Queued
            }),
            r#"{"while":"queued"}"#
        );
        assert_eq!(
            stored(Event::JobCancelled {
                during: Phase::Running
            }),
            r#"{"while":"running"}"#
        );
        let product = ProductId::new("prd-1".to_string());
        assert_eq!(
            stored(Event::JobReleased {
                product: &product,
                how: Release::Ran { wasm: None }
            }),
            r#"{"product":"prd-1","wasm":null}"#
        );
        assert_eq!(
            stored(Event::JobReleased {
                product: &product,
                how: Release::Ran {
                    wasm: Some(WasmUsage {
                        fuel_used: 7,
                        units: 2,
                        fallbacks: 0
                    })
                }
            }),
            r#"{"product":"prd-1","wasm":{"fallbacks":0,"fuel_used":7,"units":2}}"#
        );
        assert_eq!(
            stored(Event::JobReleased {
                product: &product,
                how: Release::Reused { from_job: "job-0" }
            }),
            r#"{"product":"prd-1","reused_from":"job-0"}"#
        );
        let refusal = Refusal::one(Rule::GrantScope, "no grant");
        assert_eq!(
            stored(Event::JobRejected { refusal: &refusal }),
            format!(r#"{{"rules":["{}"]}}"#, Rule::GrantScope.code())
        );
        assert_eq!(
            stored(Event::JobFailed {
                failure: "f",
                category: None
            }),
            r#"{"failure":"f"}"#
        );
        assert_eq!(
            stored(Event::JobFailed {
                failure: "f",
                category: Some("c")
            }),
            r#"{"category":"c","failure":"f"}"#
        );
        let job = JobId::new("job-1".to_string());
        assert_eq!(
            stored(Event::ProductReleased {
                job: &job,
                manifest_blake3: "m",
                rows: 3
            }),
            r#"{"job":"job-1","manifest_blake3":"m","rows":3}"#
        );
    }

    #[test]
    fn money_events_store_their_established_text() {
        let shares = Shares {
            provider_bp: 6000,
            platform_bp: 2000,
            operator_bp: 2000,
        };
        let lines = [LineDraft {
            account: Account::Platform,
            debit: Fen(0),
            credit: Fen(300),
            item: "run_fee",
            dataset_id: None,
        }];
        let line = r#"{"account":"platform","credit_fen":300,"dataset_id":null,"debit_fen":0,"item":"run_fee"}"#;
        assert_eq!(
            stored(Event::MeterRecorded {
                end_state: "released",
                price: Fen(300),
                epsilon: 0.1,
                ledger_lines: &lines,
            }),
            format!(
                r#"{{"end_state":"released","epsilon":0.1,"ledger_lines":[{line}],"price_fen":300}}"#
            )
        );
        assert_eq!(
            stored(Event::PriceSet {
                version: 2,
                fee_per_million_rows_fen: 10,
                shares,
                capitalisation_rate_bp: 1000
            }),
            r#"{"capitalisation_rate_bp":1000,"fee_per_million_rows_fen":10,"operator_bp":2000,"platform_bp":2000,"provider_bp":6000,"version":2}"#
        );
        assert_eq!(
            stored(Event::ProductListed {
                price: Fen(500),
                previous_price: None
            }),
            r#"{"previous_price_fen":null,"price_fen":500}"#
        );
        assert_eq!(
            stored(Event::ProductListed {
                price: Fen(500),
                previous_price: Some(Fen(400))
            }),
            r#"{"previous_price_fen":400,"price_fen":500}"#
        );
        let purchase = PurchaseId::new("pur-1".to_string());
        assert_eq!(
            stored(Event::ProductPurchased {
                purchase: &purchase,
                price: Fen(500),
                shares,
                ledger_lines: &lines,
            }),
            format!(
                r#"{{"ledger_lines":[{line}],"operator_bp":2000,"platform_bp":2000,"price_fen":500,"provider_bp":6000,"purchase":"pur-1"}}"#
            )
        );
        assert_eq!(
            stored(Event::ProductDownloaded {
                file: "result.csv",
                by: Downloader::Buyer { purchase: "pur-1" }
            }),
            r#"{"file":"result.csv","purchase":"pur-1"}"#
        );
        assert_eq!(
            stored(Event::ProductDownloaded {
                file: "result.csv",
                by: Downloader::Owner { from_byte: 10 }
            }),
            r#"{"file":"result.csv","from_byte":10}"#
        );
        let buyers = ["b".to_string()];
        assert_eq!(
            stored(Event::ProductRecalled {
                reason: "wrong",
                buyers: &buyers
            }),
            r#"{"buyers":["b"],"reason":"wrong"}"#
        );
        let statements = [StatementFile {
            party: "platform".into(),
            csv: "s.csv".into(),
            json: "s.json".into(),
            csv_blake3: "c".into(),
            json_blake3: "j".into(),
            lines: 1,
            total_debit: Fen(0),
            total_credit: Fen(300),
            net: Fen(300),
        }];
        assert_eq!(
            stored(Event::FreezeImposed {
                scope: "dataset",
                target: "ds-1",
                reason: "leak suspected",
                block_downloads: true,
            }),
            r#"{"block_downloads":true,"reason":"leak suspected","scope":"dataset","target":"ds-1"}"#
        );
        assert_eq!(
            stored(Event::FreezeLifted {
                scope: "platform",
                target: "",
                reason: "resolved",
            }),
            r#"{"reason":"resolved","scope":"platform","target":""}"#
        );
        assert_eq!(
            stored(Event::PeriodSettled {
                statements: &statements,
                total_debit: Fen(300),
                total_credit: Fen(300),
            }),
            r#"{"statements":[{"csv_blake3":"c","json_blake3":"j","party":"platform"}],"total_credit_fen":300,"total_debit_fen":300}"#
        );
        assert_eq!(
            stored(Event::DisputeOpened {
                purchase: "pur-1",
                product: "prd-1",
                reason: "empty file"
            }),
            r#"{"product":"prd-1","purchase":"pur-1","reason":"empty file"}"#
        );
        assert_eq!(
            stored(Event::DisputeUpheld {
                purchase: "pur-1",
                reason: "confirmed",
                price: Fen(300),
                sale_posting: Some(7),
                ledger_lines: &lines,
            }),
            format!(
                r#"{{"ledger_lines":[{line}],"price_fen":300,"purchase":"pur-1","reason":"confirmed","sale_posting_id":7}}"#
            )
        );
        assert_eq!(
            stored(Event::DisputeRejected {
                purchase: "pur-1",
                reason: "usable"
            }),
            r#"{"purchase":"pur-1","reason":"usable"}"#
        );
    }
}
