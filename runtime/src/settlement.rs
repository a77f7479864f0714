//! Settlement: turning a closed period's ledger into statements that reconcile to the fen.
//!
//! [`settle`] is the bureau's month-end step. It refuses a period that has not ended in bureau
//! time (its postings could still grow) and writes, under `D/statements/<period>/`,
//!
//! - one statement per operator and per provider with any ledger line in the period, and
//! - `platform.csv` / `platform.json`: the platform's own lines and a summary of the whole
//!   period (postings, runs, sales, every party's totals),
//!
//! each as CSV and JSON, written atomically. Every statement line carries the ledger posting
//! and line id it came from, the source (`job`, `purchase` or `dispute`) and the audit entry,
//! so any fen can be traced back; a refund's lines also name the sale they reverse (its
//! purchase and posting), which may lie in an earlier period. Before writing, the ledger is reconciled: each posting's debits equal
//! its credits, each sale's and each refund's lines equal the price its purchase recorded, each run's lines equal
//! its meter price, and all debits equal all credits; if not, nothing is written and an
//! internal error is returned.
//!
//! Statements are derived from the ledger alone, in a fixed order, and carry no "generated
//! at" time (only the period's bounds), so settling a period again writes byte-identical
//! files. Each call is audited once, with the BLAKE3 digest of every file it wrote.
//!
//! Rounding rule (printed in every JSON statement as [`ROUNDING_RULE`]): every provider and
//! operator share is rounded down to the fen; the platform receives the remainder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::budget::Period;
use crate::error::{Error, Result};
use crate::ids::Fen;
use crate::ledger::{self, Account, Posting};
use crate::store::Store;
use crate::{audit, budget, catalog, clock, disputes, files, metering};

/// The format tag of every JSON statement.
pub const STATEMENT_FORMAT: &str = "veil statement v1";
/// The rounding rule, as printed in statements.
pub const ROUNDING_RULE: &str = "every provider and operator share is rounded down to the fen; \
     the platform receives the remainder, so each posting's lines add up to its price exactly";
/// The header of every CSV statement.
pub const CSV_HEADER: &str = "posting_id,line_id,at,kind,source_kind,source_id,audit_seq,item,dataset_id,debit_fen,credit_fen,reverses_purchase_id,reverses_posting_id";

/// One line of a statement, traced to its ledger posting and line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementLine {
    pub posting_id: i64,
    pub line_id: i64,
    pub at: String,
    /// `run`, `sale` or `refund`.
    pub kind: String,
    pub source_kind: String,
    pub source_id: String,
    pub audit_seq: i64,
    pub item: String,
    pub dataset_id: Option<String>,
    pub debit: Fen,
    pub credit: Fen,
    /// A refund's line: the purchase whose sale it reverses. Absent from other lines, so a
    /// period without refunds reads as it did before refunds existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverses_purchase_id: Option<String>,
    /// A refund's line: the ledger posting of the sale it reverses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverses_posting_id: Option<i64>,
}

/// One party's totals in the platform summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyTotal {
    pub party: String,
    pub debit: Fen,
    pub credit: Fen,
    /// Credit minus debit: what the party earned (positive) or owes (negative).
    pub net: Fen,
}

/// The whole period at a glance (the platform statement only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub postings: u64,
    pub runs: u64,
    pub sales: u64,
    /// Refunds of sales after upheld disputes; absent when there were none, so a period
    /// without refunds reads as it did before refunds existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refunds: u64,
    pub total_debit: Fen,
    pub total_credit: Fen,
    /// Every party with a line in the period, by account name.
    pub parties: Vec<PartyTotal>,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// One party's statement for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub format: String,
    pub period: Period,
    /// First instant of the period (RFC 3339, UTC; the period is a bureau-time month).
    pub period_start: String,
    /// First instant after the period.
    pub period_end: String,
    /// The account: `operator:<name>`, `provider:<name>` or `platform`.
    pub party: String,
    pub rounding_rule: String,
    pub lines: Vec<StatementLine>,
    pub total_debit: Fen,
    pub total_credit: Fen,
    /// Credit minus debit.
    pub net: Fen,
    /// Only in the platform's statement.
    pub summary: Option<Summary>,
}

/// Where one statement was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementFile {
    pub party: String,
    pub csv: PathBuf,
    pub json: PathBuf,
    pub csv_blake3: String,
    pub json_blake3: String,
    pub lines: u64,
    pub total_debit: Fen,
    pub total_credit: Fen,
    pub net: Fen,
}

/// What [`settle`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub period: Period,
    pub dir: PathBuf,
    /// The platform first, then the other parties by account name.
    pub statements: Vec<StatementFile>,
    pub total_debit: Fen,
    pub total_credit: Fen,
    pub audit_seq: i64,
}

/// Reads a period as a user wrote it (`YYYY-MM`, a bureau-time calendar month).
pub fn parse_period(text: &str) -> Result<Period> {
    Period::parse(text).map_err(|e| Error::invalid(e.to_string()))
}

/// A period's bounds: `(start, end)` instants in UTC of a bureau-time calendar month.
pub fn period_bounds(period: &str) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    bounds(&parse_period(period)?)
}

fn bounds(period: &Period) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    period.bounds().map_err(|e| Error::invalid(e.to_string()))
}

/// Characters of a party's name kept in its statement files' names.
const FILE_STEM_NAME_CHARS: usize = 40;

/// A file-name-safe, unique name for a party's statement files (without extension): the role,
/// the name with its letters and digits in any script kept (`provider-山西省人社厅-…`) and
/// everything else (separators, spaces, dots) turned into `_`, and a digest of the whole
/// party, which keeps two names that read alike apart.
pub fn file_stem(party: &Account) -> String {
    stem(party, char::is_alphanumeric)
}

/// How statement files were named before names kept their Chinese characters: ASCII letters
/// and digits only. Stores settled then still hold such files; readers look for both.
fn ascii_file_stem(party: &Account) -> String {
    stem(party, |c| c.is_ascii_alphanumeric())
}

/// The names a party's settled statement files may have, the current one first.
pub fn file_stems(party: &Account) -> [String; 2] {
    [file_stem(party), ascii_file_stem(party)]
}

fn stem(party: &Account, keep: impl Fn(char) -> bool) -> String {
    match party {
        Account::Platform => "platform".to_string(),
        Account::Operator(name) | Account::Provider(name) | Account::Buyer(name) => {
            let slug: String = name
                .chars()
                .take(FILE_STEM_NAME_CHARS)
                .map(|c| if keep(c) { c } else { '_' })
                .collect();
            let digest = blake3::hash(party.as_text().as_bytes()).to_hex();
            format!("{}-{slug}-{}", party.role(), &digest.as_str()[..12])
        }
    }
}

/// The settled statement file of `party` with `extension` in `dir`, under whichever of its
/// names (see [`file_stems`]) exists; the current name if neither does.
pub fn existing_file(dir: &Path, party: &Account, extension: &str) -> PathBuf {
    let [current, ascii] = file_stems(party);
    let current = dir.join(format!("{current}.{extension}"));
    let ascii = dir.join(format!("{ascii}.{extension}"));
    if !current.exists() && ascii.exists() {
        ascii
    } else {
        current
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn to_csv(statement: &Statement) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for l in &statement.lines {
        let row = [
            l.posting_id.to_string(),
            l.line_id.to_string(),
            l.at.clone(),
            l.kind.clone(),
            l.source_kind.clone(),
            l.source_id.clone(),
            l.audit_seq.to_string(),
            l.item.clone(),
            l.dataset_id.clone().unwrap_or_default(),
            l.debit.0.to_string(),
            l.credit.0.to_string(),
            l.reverses_purchase_id.clone().unwrap_or_default(),
            l.reverses_posting_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
        ];
        out.push_str(
            &row.iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out.push_str(&format!(
        ",,,,,,,total,,{},{},,\n",
        statement.total_debit.0, statement.total_credit.0
    ));
    out
}

fn fen(sum: i128) -> Result<Fen> {
    i64::try_from(sum)
        .map(Fen)
        .map_err(|_| Error::internal("adding up a statement: a total does not fit in fen"))
}

/// Checks that the period's postings balance and match their sources (see the module docs).
fn reconcile(conn: &Connection, postings: &[Posting]) -> Result<()> {
    let mut debits = 0i128;
    let mut credits = 0i128;
    for posting in postings {
        if posting.debits() != posting.credits() {
            return Err(Error::internal(format!(
                "reconciling ledger posting {}: its debits and credits differ",
                posting.id
            )));
        }
        let recorded: i64 = match posting.source_kind.as_str() {
            "purchase" => conn.query_row(
                "SELECT price_fen FROM purchases WHERE id = ?1",
                [&posting.source_id],
                |row| row.get(0),
            )?,
            "job" => metering::price_of_job(conn, &posting.source_id)?,
            "dispute" => match disputes::refunded_sale(conn, &posting.source_id)? {
                Some(sale) => sale.price.0,
                None => {
                    return Err(Error::internal(format!(
                        "reconciling ledger posting {}: it refunds a dispute the store does not hold",
                        posting.id
                    )));
                }
            },
            _ => {
                return Err(Error::internal(format!(
                    "reconciling ledger posting {}: unknown source kind",
                    posting.id
                )));
            }
        };
        if posting.credits() != i128::from(recorded) {
            return Err(Error::internal(format!(
                "reconciling ledger posting {}: its splits do not add up to the price its {} recorded",
                posting.id, posting.source_kind
            )));
        }
        debits += posting.debits();
        credits += posting.credits();
    }
    if debits != credits {
        return Err(Error::internal(
            "reconciling the period: all debits differ from all credits",
        ));
    }
    Ok(())
}

/// Builds every statement of a period from the ledger (reconciled first), platform first.
pub fn statements(conn: &Connection, period: &Period) -> Result<Vec<Statement>> {
    let (start, end) = bounds(period)?;
    let postings = ledger::postings(conn, Some(period))?;
    reconcile(conn, &postings)?;
    let mut by_party: BTreeMap<String, Vec<StatementLine>> = BTreeMap::new();
    let (mut total_debit, mut total_credit) = (0i128, 0i128);
    for posting in &postings {
        let reverses = if posting.source_kind == "dispute" {
            disputes::refunded_sale(conn, &posting.source_id)?
        } else {
            None
        };
        for line in &posting.lines {
            total_debit += i128::from(line.debit.0);
            total_credit += i128::from(line.credit.0);
            by_party
                .entry(line.account.clone())
                .or_default()
                .push(StatementLine {
                    posting_id: posting.id,
                    line_id: line.id,
                    at: posting.at.clone(),
                    kind: posting.kind.clone(),
                    source_kind: posting.source_kind.clone(),
                    source_id: posting.source_id.clone(),
                    audit_seq: posting.audit_seq,
                    item: line.item.clone(),
                    dataset_id: line.dataset_id.clone(),
                    debit: line.debit,
                    credit: line.credit,
                    reverses_purchase_id: reverses.as_ref().map(|s| s.purchase_id.clone()),
                    reverses_posting_id: reverses.as_ref().and_then(|s| s.sale_posting_id),
                });
        }
    }
    let statement = |party: &str, lines: Vec<StatementLine>| -> Result<Statement> {
        let debit: i128 = lines.iter().map(|l| i128::from(l.debit.0)).sum();
        let credit: i128 = lines.iter().map(|l| i128::from(l.credit.0)).sum();
        Ok(Statement {
            format: STATEMENT_FORMAT.to_string(),
            period: period.clone(),
            period_start: clock::format(start),
            period_end: clock::format(end),
            party: party.to_string(),
            rounding_rule: ROUNDING_RULE.to_string(),
            lines,
            total_debit: fen(debit)?,
            total_credit: fen(credit)?,
            net: fen(credit - debit)?,
            summary: None,
        })
    };
    let mut parties = Vec::new();
    for (party, lines) in &by_party {
        let s = statement(party, lines.clone())?;
        parties.push(PartyTotal {
            party: party.clone(),
            debit: s.total_debit,
            credit: s.total_credit,
            net: s.net,
        });
    }
    let mut platform = statement(
        "platform",
        by_party.get("platform").cloned().unwrap_or_default(),
    )?;
    platform.summary = Some(Summary {
        postings: postings.len() as u64,
        runs: postings.iter().filter(|p| p.kind == "run").count() as u64,
        sales: postings.iter().filter(|p| p.kind == "sale").count() as u64,
        refunds: postings.iter().filter(|p| p.kind == "refund").count() as u64,
        total_debit: fen(total_debit)?,
        total_credit: fen(total_credit)?,
        parties,
    });
    let mut out = vec![platform];
    for (party, lines) in by_party {
        let account = Account::parse(&party)?;
        if matches!(account, Account::Operator(_) | Account::Provider(_)) {
            out.push(statement(&party, lines)?);
        }
    }
    Ok(out)
}

/// Settles a period that has ended (the bureau): writes every statement (see the module docs)
/// and audits the settlement with the files' digests.
pub fn settle(store: &mut Store, period: &str, actor: &str) -> Result<Settlement> {
    let period = parse_period(period)?;
    let (_, end) = bounds(&period)?;
    if clock::now() < end {
        return Err(Error::invalid(format!(
            "period {period} has not ended yet: it ends at {} (bureau time); settle it after then",
            end.with_timezone(&clock::bureau_offset()).to_rfc3339()
        )));
    }
    let built = statements(store.conn(), &period)?;
    let dir = store.statements_dir().join(period.as_str());
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let mut written = Vec::new();
    let mut total = (Fen(0), Fen(0));
    for statement in &built {
        let account = Account::parse(&statement.party)?;
        let stem = file_stem(&account);
        let csv_path = dir.join(format!("{stem}.csv"));
        let json_path = dir.join(format!("{stem}.json"));
        let csv = to_csv(statement);
        let mut json = serde_json::to_vec_pretty(statement)
            .map_err(|e| Error::internal(format!("encoding a statement: {e}")))?;
        json.push(b'\n');
        files::write_atomic(&csv_path, csv.as_bytes(), false)?;
        files::write_atomic(&json_path, &json, false)?;
        if let Some(summary) = &statement.summary {
            total = (summary.total_debit, summary.total_credit);
        }
        written.push(StatementFile {
            party: statement.party.clone(),
            csv: csv_path,
            json: json_path,
            csv_blake3: blake3::hash(csv.as_bytes()).to_hex().to_string(),
            json_blake3: blake3::hash(&json).to_hex().to_string(),
            lines: statement.lines.len() as u64,
            total_debit: statement.total_debit,
            total_credit: statement.total_credit,
            net: statement.net,
        });
    }
    let audit_seq = store.write(|tx| {
        audit::append(
            tx,
            actor,
            period.as_str(),
            audit::Event::PeriodSettled {
                statements: &written,
                total_debit: total.0,
                total_credit: total.1,
            },
        )
    })?;
    Ok(Settlement {
        period,
        dir,
        statements: written,
        total_debit: total.0,
        total_credit: total.1,
        audit_seq,
    })
}

/// Reads back one party's settled statement (`party` as an account name, e.g.
/// `operator:<name>`, or `platform`).
pub fn statement(store: &Store, period: &str, party: &str) -> Result<Statement> {
    parse_period(period)?;
    let account = Account::parse(party)?;
    let path = existing_file(&store.statements_dir().join(period), &account, "json");
    read_statement(&path).ok_or(Error::NotFound {
        kind: "settled statement",
        id: format!("{party} for {period}"),
        hint: "; the period may not be settled yet (veil settle --period) or the party had no entries in it",
    })
}

fn read_statement(path: &Path) -> Option<Statement> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What one of a provider's datasets was used for and earned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetUsage {
    pub dataset_id: String,
    pub name: String,
    /// Registered rows: the weight of its share.
    pub rows: u64,
    /// Jobs that reserved budget on it (whatever their end).
    pub jobs: u64,
    pub rows_fee_earned: Fen,
    /// Sale shares, less those refunded after an upheld dispute.
    pub sale_shares_earned: Fen,
}

/// A provider's view of its datasets: per dataset, the jobs that read it, the rows fees and
/// the sale shares it earned (all periods).
///
/// The datasets come from the catalog and the job counts from the budget book; only the
/// ledger's own lines are summed here.
pub fn provider_usage(conn: &Connection, provider: &str) -> Result<Vec<DatasetUsage>> {
    let account = Account::Provider(provider.to_string()).as_text();
    let mut earned = conn.prepare_cached(
        "SELECT COALESCE(SUM(credit_fen - debit_fen), 0) FROM ledger_lines
         WHERE account = ?1 AND dataset_id = ?2 AND item = ?3",
    )?;
    let mut out = Vec::new();
    for dataset in catalog::all_stored(conn)? {
        let policy: serde_json::Value = serde_json::from_str(&dataset.policy_json)
            .map_err(|_| Error::internal("reading a dataset's stored policy"))?;
        if policy.get("provider").and_then(serde_json::Value::as_str) != Some(provider) {
            continue;
        }
        let mut earned_on = |item: &str| -> Result<Fen> {
            Ok(Fen(earned
                .query_row(params![account, dataset.id, item], |row| {
                    row.get(0)
                })?))
        };
        let rows_fee_earned = earned_on(ledger::ITEM_ROWS_FEE)?;
        // A refunded sale's share is debited back under its own item (a negative sum here).
        let sale_shares_earned = Fen(earned_on(ledger::ITEM_PROVIDER_SHARE)?.0
            + earned_on(ledger::ITEM_REFUND_PROVIDER_SHARE)?.0);
        out.push(DatasetUsage {
            jobs: budget::jobs_reading_dataset(conn, &dataset.id)?,
            rows: u64::try_from(dataset.rows).unwrap_or(0),
            dataset_id: dataset.id,
            name: dataset.name,
            rows_fee_earned,
            sale_shares_earned,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_bureau_months() {
        let (start, end) = period_bounds("2026-11").expect("bounds");
        assert_eq!(clock::format(start), "2026-10-31T16:00:00Z");
        assert_eq!(clock::format(end), "2026-11-30T16:00:00Z");
        let (_, december) = period_bounds("2026-12").expect("bounds");
        assert_eq!(clock::format(december), "2026-12-31T16:00:00Z");
        for bad in [
            "2026-13",
            "2026-1",
            "26-11",
            "2026/11",
            "2026-11-01",
            "",
            "abcd-ef",
        ] {
            assert!(period_bounds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_stems_are_safe_and_distinct() {
        let a = file_stem(&Account::Operator("a/b".into()));
        let b = file_stem(&Account::Operator("a_b".into()));
        assert_ne!(a, b);
        assert!(a.starts_with("operator-a_b-"));
        assert!(!a.contains('/'));
        assert_eq!(file_stem(&Account::Platform), "platform");
        // A Chinese name stays readable; the name before it kept ASCII only.
        let party = Account::Provider("山西省人社厅 (太原)".into());
        let chinese = file_stem(&party);
        assert!(
            chinese.starts_with("provider-山西省人社厅__太原_-"),
            "{chinese}"
        );
        let [_, ascii] = file_stems(&party);
        assert!(
            ascii.is_ascii() && ascii.starts_with(&format!("provider-{}-", "_".repeat(11))),
            "{ascii}"
        );
    }

    /// A store settled before names kept Chinese characters still finds its files.
    #[test]
    fn statements_settled_under_ascii_names_are_still_found() {
        let dir = tempfile::tempdir().expect("dir");
        let party = Account::Operator("晋数科技".into());
        let [current, ascii] = file_stems(&party);
        assert_eq!(
            existing_file(dir.path(), &party, "csv"),
            dir.path().join(format!("{current}.csv"))
        );
        std::fs::write(dir.path().join(format!("{ascii}.csv")), "x").expect("write");
        assert_eq!(
            existing_file(dir.path(), &party, "csv"),
            dir.path().join(format!("{ascii}.csv"))
        );
        std::fs::write(dir.path().join(format!("{current}.csv")), "x").expect("write");
        assert_eq!(
            existing_file(dir.path(), &party, "csv"),
            dir.path().join(format!("{current}.csv"))
        );
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
