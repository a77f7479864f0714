//! Cross-checks: what the audit log recorded against what the store holds now.
//!
//! The chain proves that the audit entries are the platform's own and unchanged; these checks
//! make the other records answer to them. Each names the first record that disagrees, what it
//! is, and what differs:
//!
//! | record | must agree with |
//! |---|---|
//! | a product (products table row, folder on disk) | its `product.released` entry: manifest BLAKE3 and job; the folder verifies with the platform key; the manifest's audit checkpoint names an entry that still has that hash, older than the release, and is in `audit.checkpoints` |
//! | a meter record | its `meter.recorded` entry: price and end state |
//! | a ledger posting | the entry it names (`meter.recorded` of its job, `product.purchased` of its purchase, `dispute.upheld` of its dispute for a refund): balanced, its total is the recorded price, its lines are the lines recorded (entries written since the lines were recorded) |
//! | a purchase | its `product.purchased` entry: price |
//! | a statement file under `statements/<period>/` | the BLAKE3 digests of the period's latest `period.settled` entry; no file or period folder that no entry lists |
//!
//! And the other way round: every `product.released`, `meter.recorded` and
//! `product.purchased` entry has its row, and every charged one its posting; every
//! `dispute.upheld` entry that recorded refund lines has its refund posting.
//!
//! Products, meter records, postings and purchases are read from the same database snapshot as
//! the chain. Files are read as they are: a settlement or a release running at the same moment
//! can show as a mismatch, so run `veil audit verify` when neither is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use rusqlite::Connection;
use veil_sdk::manifest::{MANIFEST_FILE, Manifest, verify_product_dir};

use super::checkpoints::Log;
use super::{Broken, Entry};
use crate::error::Result;
use crate::ledger::{self, Account, AuditedLine};
use crate::settlement;
use crate::store::query_rows;

const PRODUCT_RELEASED: &str = "product.released";
const METER_RECORDED: &str = "meter.recorded";
const PRODUCT_PURCHASED: &str = "product.purchased";
const PERIOD_SETTLED: &str = "period.settled";
const DISPUTE_UPHELD: &str = "dispute.upheld";

/// The kinds of entry the cross-checks read; the chain walk keeps them.
pub(crate) const CAPTURED_KINDS: &[&str] = &[
    PRODUCT_RELEASED,
    METER_RECORDED,
    PRODUCT_PURCHASED,
    PERIOD_SETTLED,
    DISPUTE_UPHELD,
];

/// What kind of record a mismatch is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Product,
    MeterRecord,
    LedgerPosting,
    Purchase,
    Statement,
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Product => "product",
            Self::MeterRecord => "meter record of job",
            Self::LedgerPosting => "ledger posting",
            Self::Purchase => "purchase",
            Self::Statement => "statement",
        })
    }
}

fn mismatch(record: Record, id: impl Into<String>, what: impl Into<String>) -> Broken {
    Broken::Mismatch {
        record,
        id: id.into(),
        what: what.into(),
    }
}

/// A product as the products table records it and as its folder is.
pub(crate) struct ProductOnDisk {
    id: String,
    job_id: String,
    manifest_blake3: String,
    /// The BLAKE3 of `manifest.json`, or why it could not be read.
    manifest_file: std::result::Result<String, String>,
    /// The verified manifest, or why the folder does not verify.
    verified: std::result::Result<Manifest, String>,
}

impl ProductOnDisk {
    /// The entry its manifest's checkpoint names, if it has one.
    pub(crate) fn checkpoint_seq(&self) -> Option<i64> {
        self.verified
            .as_ref()
            .ok()
            .and_then(|m| m.audit_checkpoint.as_ref())
            .map(|c| c.seq)
    }
}

/// Reads every product row and verifies its folder (`products_dir/<id>`) with the platform key.
pub(crate) fn read_products(
    conn: &Connection,
    products_dir: &Path,
    platform: &VerifyingKey,
) -> Result<Vec<ProductOnDisk>> {
    let mut statement =
        conn.prepare("SELECT id, job_id, manifest_blake3 FROM products ORDER BY rowid")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    let mut products = Vec::new();
    for row in rows {
        let (id, job_id, manifest_blake3) = row?;
        let dir = products_dir.join(&id);
        let manifest_file = match blake3_of(&dir.join(MANIFEST_FILE)) {
            Ok(digest) => Ok(digest),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(format!("{MANIFEST_FILE} is missing from {}", dir.display()))
            }
            Err(e) => Err(format!(
                "reading {}: {e}",
                dir.join(MANIFEST_FILE).display()
            )),
        };
        // A product its grant's disposition destroyed keeps only its manifest: the signature
        // is what can still be checked.
        let destroyed = crate::products::state_of(conn, &id)?.as_deref() == Some("destroyed");
        let verified = if destroyed {
            veil_sdk::manifest::read_manifest(&dir)
                .and_then(|signed| {
                    veil_sdk::manifest::verify_signature(&signed, Some(platform))
                        .map(|()| signed.manifest)
                })
                .map_err(|e| format!("its manifest does not verify: {e}"))
        } else {
            verify_product_dir(&dir, Some(platform))
                .map(|product| product.manifest)
                .map_err(|e| format!("its folder does not verify: {e}"))
        };
        products.push(ProductOnDisk {
            id,
            job_id,
            manifest_blake3,
            manifest_file,
            verified,
        });
    }
    Ok(products)
}

fn blake3_of(path: &Path) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// What the checks compare against: the verified chain and checkpoint log.
pub(crate) struct Context<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) log: &'a Log,
    /// Hashes of the entries product checkpoints name.
    pub(crate) hashes: &'a BTreeMap<i64, String>,
    /// Entries of [`CAPTURED_KINDS`], by sequence number.
    pub(crate) captured: &'a HashMap<i64, Entry>,
}

/// An entry's details as JSON (the chain vouched for the text; `Null` if it is not JSON).
fn details(entry: &Entry) -> serde_json::Value {
    serde_json::from_str(&entry.details).unwrap_or(serde_json::Value::Null)
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "nothing".to_string(),
        other => other.to_string(),
    }
}

impl Context<'_> {
    /// The captured entries of one kind, oldest first.
    fn entries(&self, kind: &str) -> Vec<&Entry> {
        let mut entries: Vec<&Entry> = self.captured.values().filter(|e| e.kind == kind).collect();
        entries.sort_by_key(|e| e.seq);
        entries
    }

    /// The first entry of `kind` per subject.
    fn by_subject(&self, kind: &str) -> HashMap<&str, &Entry> {
        let mut map = HashMap::new();
        for entry in self.entries(kind) {
            map.entry(entry.subject.as_str()).or_insert(entry);
        }
        map
    }

    /// Products ↔ `product.released` entries; returns how many products were checked.
    pub(crate) fn products(
        &self,
        products: &[ProductOnDisk],
    ) -> std::result::Result<usize, Broken> {
        let released = self.by_subject(PRODUCT_RELEASED);
        for product in products {
            let fail = |what: String| mismatch(Record::Product, &product.id, what);
            let Some(entry) = released.get(product.id.as_str()) else {
                return Err(fail("no product.released audit entry records it".into()));
            };
            let recorded = details(entry);
            if recorded["manifest_blake3"].as_str() != Some(&product.manifest_blake3) {
                return Err(fail(format!(
                    "the products table records a manifest digest other than the one its product.released audit entry {} holds",
                    entry.seq
                )));
            }
            if recorded["job"].as_str() != Some(&product.job_id) {
                return Err(fail(format!(
                    "the products table says job {} made it, its product.released audit entry {} says job {}",
                    product.job_id,
                    entry.seq,
                    text(&recorded["job"])
                )));
            }
            match &product.manifest_file {
                Err(why) => return Err(fail(why.clone())),
                Ok(digest) if *digest != product.manifest_blake3 => {
                    return Err(fail(format!(
                        "{MANIFEST_FILE} is not the manifest its product.released audit entry {} recorded (its BLAKE3 differs) — it was replaced",
                        entry.seq
                    )));
                }
                Ok(_) => {}
            }
            let manifest = product.verified.as_ref().map_err(|why| fail(why.clone()))?;
            // Products released before manifests carried checkpoints have none.
            let Some(checkpoint) = &manifest.audit_checkpoint else {
                continue;
            };
            let seq = checkpoint.seq;
            if checkpoint.keyed_from != self.log.keyed_from {
                return Err(fail(format!(
                    "its manifest's audit checkpoint says keyed hashes start at entry {}, the checkpoint log says {}",
                    checkpoint.keyed_from, self.log.keyed_from
                )));
            }
            if seq >= entry.seq {
                return Err(fail(format!(
                    "its manifest's audit checkpoint names entry {seq}, which is not older than its release (entry {})",
                    entry.seq
                )));
            }
            if self.hashes.get(&seq) != Some(&checkpoint.hash) {
                return Err(fail(format!(
                    "its manifest's audit checkpoint (entry {seq}) has a hash the log no longer holds — the log was rewritten after the product was released"
                )));
            }
            let exported_up_to = self.log.checkpoints.last().map_or(0, |c| c.seq);
            if seq <= exported_up_to && !self.log.holds(checkpoint) {
                return Err(fail(format!(
                    "its manifest's audit checkpoint (entry {seq}) is not in audit.checkpoints — the checkpoint log was edited"
                )));
            }
        }
        let known: HashSet<&str> = products.iter().map(|p| p.id.as_str()).collect();
        if let Some(entry) = self
            .entries(PRODUCT_RELEASED)
            .into_iter()
            .find(|e| !known.contains(e.subject.as_str()))
        {
            return Err(mismatch(
                Record::Product,
                &entry.subject,
                format!(
                    "its product.released audit entry {} has no row in the products table",
                    entry.seq
                ),
            ));
        }
        Ok(products.len())
    }

    /// Meter records ↔ `meter.recorded` entries ↔ ledger postings, and purchases ↔
    /// `product.purchased` entries ↔ postings; returns the meter records and postings checked.
    pub(crate) fn money(&self) -> Result<std::result::Result<(usize, usize), Broken>> {
        let metered = self.by_subject(METER_RECORDED);
        let meter: Vec<(String, String, i64)> = query_rows(
            self.conn,
            "SELECT job_id, end_state, price_fen FROM meter ORDER BY rowid",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        for (job, end_state, price) in &meter {
            let fail = |what: String| mismatch(Record::MeterRecord, job, what);
            let Some(entry) = metered.get(job.as_str()) else {
                return Ok(Err(fail("no meter.recorded audit entry records it".into())));
            };
            let recorded = details(entry);
            if recorded["price_fen"].as_i64() != Some(*price) {
                return Ok(Err(fail(format!(
                    "its price is {price} fen in the meter table, but its meter.recorded audit entry {} recorded {} fen",
                    entry.seq,
                    text(&recorded["price_fen"])
                ))));
            }
            if recorded["end_state"].as_str() != Some(end_state) {
                return Ok(Err(fail(format!(
                    "its end state is {end_state} in the meter table, but its meter.recorded audit entry {} recorded {}",
                    entry.seq,
                    text(&recorded["end_state"])
                ))));
            }
        }
        let jobs: HashSet<&str> = meter.iter().map(|(job, _, _)| job.as_str()).collect();
        let meter_entries = self.entries(METER_RECORDED);
        if let Some(entry) = meter_entries
            .iter()
            .find(|e| !jobs.contains(e.subject.as_str()))
        {
            return Ok(Err(mismatch(
                Record::MeterRecord,
                &entry.subject,
                format!(
                    "its meter.recorded audit entry {} has no row in the meter table",
                    entry.seq
                ),
            )));
        }

        let postings = ledger::postings(self.conn, None)?;
        for posting in &postings {
            if let Err(broken) = self.posting(posting) {
                return Ok(Err(broken));
            }
        }
        let posted: HashSet<(&str, &str)> = postings
            .iter()
            .map(|p| (p.source_kind.as_str(), p.source_id.as_str()))
            .collect();
        for entry in &meter_entries {
            let recorded = details(entry);
            let price = recorded["price_fen"].as_i64().unwrap_or(0);
            if recorded["end_state"] == "released"
                && price > 0
                && !posted.contains(&("job", entry.subject.as_str()))
            {
                return Ok(Err(mismatch(
                    Record::MeterRecord,
                    &entry.subject,
                    format!(
                        "its meter.recorded audit entry {} charged {price} fen, but no ledger posting records the charge",
                        entry.seq
                    ),
                )));
            }
        }

        let purchases: Vec<(String, i64, i64)> = query_rows(
            self.conn,
            "SELECT id, price_fen, audit_seq FROM purchases ORDER BY rowid",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        for (id, price, seq) in &purchases {
            let fail = |what: String| mismatch(Record::Purchase, id, what);
            let recorded = match self.captured.get(seq) {
                Some(entry) if entry.kind == PRODUCT_PURCHASED => details(entry),
                _ => {
                    return Ok(Err(fail(format!(
                        "it names audit entry {seq}, which is not a product.purchased entry"
                    ))));
                }
            };
            if recorded["purchase"].as_str() != Some(id) {
                return Ok(Err(fail(format!(
                    "it names audit entry {seq}, which records purchase {}",
                    text(&recorded["purchase"])
                ))));
            }
            if recorded["price_fen"].as_i64() != Some(*price) {
                return Ok(Err(fail(format!(
                    "its price is {price} fen in the purchases table, but its product.purchased audit entry {seq} recorded {} fen",
                    text(&recorded["price_fen"])
                ))));
            }
        }
        let bought: HashSet<&str> = purchases.iter().map(|(id, _, _)| id.as_str()).collect();
        for entry in self.entries(PRODUCT_PURCHASED) {
            let recorded = details(entry);
            let id = text(&recorded["purchase"]);
            let price = recorded["price_fen"].as_i64().unwrap_or(0);
            let missing = if !bought.contains(id.as_str()) {
                "has no row in the purchases table"
            } else if price > 0 && !posted.contains(&("purchase", id.as_str())) {
                "charged the buyer, but no ledger posting records the sale"
            } else {
                continue;
            };
            return Ok(Err(mismatch(
                Record::Purchase,
                id,
                format!("its product.purchased audit entry {} {missing}", entry.seq),
            )));
        }
        for entry in self.entries(DISPUTE_UPHELD) {
            let refunded = details(entry)["ledger_lines"]
                .as_array()
                .is_some_and(|lines| !lines.is_empty());
            if refunded && !posted.contains(&("dispute", entry.subject.as_str())) {
                return Ok(Err(mismatch(
                    Record::LedgerPosting,
                    format!("refund of dispute {}", entry.subject),
                    format!(
                        "its dispute.upheld audit entry {} refunded the sale, but no ledger posting records the refund",
                        entry.seq
                    ),
                )));
            }
        }
        Ok(Ok((meter.len(), postings.len())))
    }

    /// One posting against the entry it names.
    fn posting(&self, posting: &ledger::Posting) -> std::result::Result<(), Broken> {
        let id = format!(
            "{} ({} {})",
            posting.id, posting.source_kind, posting.source_id
        );
        let fail = |what: String| mismatch(Record::LedgerPosting, &id, what);
        if posting.debits() != posting.credits() {
            return Err(fail(format!(
                "its debits ({} fen) differ from its credits ({} fen)",
                posting.debits(),
                posting.credits()
            )));
        }
        let seq = posting.audit_seq;
        let kind = match posting.source_kind.as_str() {
            "job" => METER_RECORDED,
            "purchase" => PRODUCT_PURCHASED,
            "dispute" => DISPUTE_UPHELD,
            other => return Err(fail(format!("its source kind `{other}` is unknown"))),
        };
        let (entry, recorded) = match self.captured.get(&seq) {
            Some(entry) if entry.kind == kind => (entry, details(entry)),
            _ => {
                return Err(fail(format!(
                    "it names audit entry {seq}, which is not the {kind} entry of its {}",
                    posting.source_kind
                )));
            }
        };
        // A meter record's and a refund's entry are filed under the job and the dispute.
        let source = if kind == METER_RECORDED || kind == DISPUTE_UPHELD {
            entry.subject.as_str()
        } else {
            recorded["purchase"].as_str().unwrap_or_default()
        };
        if source != posting.source_id {
            return Err(fail(format!(
                "it names audit entry {seq}, which records another {}",
                posting.source_kind
            )));
        }
        let price = recorded["price_fen"].as_i64();
        if price.map(i128::from) != Some(posting.credits()) {
            return Err(fail(format!(
                "its lines move {} fen, but its {kind} audit entry {seq} recorded a price of {} fen",
                posting.credits(),
                text(&recorded["price_fen"])
            )));
        }
        // Entries written before the lines were recorded hold only the price.
        let Some(audited) = recorded.get("ledger_lines") else {
            return Ok(());
        };
        let audited: Vec<AuditedLine> = serde_json::from_value(audited.clone()).map_err(|_| {
            fail(format!(
                "its {kind} audit entry {seq} holds ledger lines Veil cannot read"
            ))
        })?;
        for (index, line) in posting.lines.iter().enumerate() {
            let actual = AuditedLine::from(line);
            let Some(expected) = audited.get(index) else {
                return Err(fail(format!(
                    "it has {} lines, its {kind} audit entry {seq} recorded {}",
                    posting.lines.len(),
                    audited.len()
                )));
            };
            if actual != *expected {
                return Err(fail(format!(
                    "line {} ({}, {}) is {} — its {kind} audit entry {seq} recorded {} ({}, {})",
                    line.id,
                    line.account,
                    line.item,
                    actual.amount(),
                    expected.amount(),
                    expected.account,
                    expected.item
                )));
            }
        }
        if audited.len() != posting.lines.len() {
            return Err(fail(format!(
                "it has {} lines, its {kind} audit entry {seq} recorded {}",
                posting.lines.len(),
                audited.len()
            )));
        }
        Ok(())
    }

    /// Statement files ↔ the digests of each period's latest `period.settled` entry; returns
    /// how many files were checked.
    pub(crate) fn statements(&self, dir: &Path) -> Result<std::result::Result<usize, Broken>> {
        // A period settled again is described by its latest entry.
        let mut settled: BTreeMap<&str, &Entry> = BTreeMap::new();
        for entry in self.entries(PERIOD_SETTLED) {
            settled.insert(entry.subject.as_str(), entry);
        }
        let mut checked = 0;
        for (period, entry) in &settled {
            let folder = dir.join(period);
            let recorded = details(entry);
            let listed = recorded["statements"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut names = HashSet::new();
            for statement in &listed {
                let party = text(&statement["party"]);
                let Ok(account) = Account::parse(&party) else {
                    return Ok(Err(mismatch(
                        Record::Statement,
                        format!("statements/{period}"),
                        format!(
                            "its period.settled audit entry {} names a party Veil cannot read",
                            entry.seq
                        ),
                    )));
                };
                for (extension, digest) in [("csv", "csv_blake3"), ("json", "json_blake3")] {
                    // Stores settled before names kept Chinese characters hold ASCII names.
                    let path = settlement::existing_file(&folder, &account, extension);
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let id = format!("statements/{period}/{name}");
                    let what = match blake3_of(&path) {
                        Ok(actual) if statement[digest].as_str() == Some(&actual) => {
                            checked += 1;
                            names.insert(name);
                            continue;
                        }
                        Ok(_) => format!(
                            "{party}'s statement differs from the digest its period.settled audit entry {} recorded — the file was edited after settlement",
                            entry.seq
                        ),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => format!(
                            "{party}'s statement is missing; its period.settled audit entry {} recorded it",
                            entry.seq
                        ),
                        Err(e) => format!("cannot be read: {e}"),
                    };
                    return Ok(Err(mismatch(Record::Statement, id, what)));
                }
            }
            for name in visible_names(&folder)? {
                if !names.contains(&name) {
                    return Ok(Err(mismatch(
                        Record::Statement,
                        format!("statements/{period}/{name}"),
                        format!(
                            "it is not one of the statements its period.settled audit entry {} lists",
                            entry.seq
                        ),
                    )));
                }
            }
        }
        for name in visible_names(dir)? {
            if !settled.contains_key(name.as_str()) {
                return Ok(Err(mismatch(
                    Record::Statement,
                    format!("statements/{name}"),
                    "no period.settled audit entry records this period",
                )));
            }
        }
        Ok(Ok(checked))
    }
}

/// The names in a folder, sorted, without the dot files that atomic writes use as temporary
/// names; none if the folder does not exist.
fn visible_names(dir: &Path) -> Result<Vec<String>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::Error::io("listing", dir, e)),
    };
    let mut names = Vec::new();
    for item in listing {
        let item = item.map_err(|e| crate::Error::io("listing", dir, e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
