//! The manifest of a released data product, its signature, and offline verification.
//!
//! A product is a folder: the result files (Parquet and CSV) and `manifest.json`, which is a
//! [`SignedManifest`]. The [`Manifest`] records where the data came from (template, job,
//! source datasets with provider and acquisition date), what privacy protection was applied
//! (ε, δ, mechanism, k, suppressed groups, noise scales), and the size and BLAKE3 digest of
//! every file. The platform signs it with Ed25519, so a buyer can check a download without
//! asking the platform anything:
//!
//! ```text
//! manifest ──canonical_bytes──► sorted compact JSON ──"veil-manifest-v1\n" ‖ bytes──► Ed25519
//! verify_product_dir: manifest.json ─► signature (pinned key?) ─► every file: size, BLAKE3
//!                                                              ─► no unlisted file
//! ```
//!
//! Read [`Manifest`] first, then [`sign`], then [`verify_product_dir`].
//!
//! A manifest also carries the platform's **audit checkpoint** current when the product was
//! written ([`AuditCheckpoint`]): the sequence number and hash of the audit log's head, signed
//! on its own. Every buyer thus holds a witness of the log's history; the bureau's
//! `veil audit verify` checks each product's witness against the log, so the platform cannot
//! quietly rewrite history a product has seen.
//!
//! The canonical form is specified so that verifiers in other languages can reproduce it:
//! the manifest as a JSON value, objects with keys sorted by their UTF-8 bytes, no
//! whitespace, strings escaped as `serde_json` escapes them, numbers as `serde_json` prints
//! them. Every struct here refuses unknown fields, because a field the signature does not
//! cover must not be able to ride along in a signed file.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};

/// The name of the manifest inside a product folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The format tag of this manifest version, which the platform signs. A verifier refuses any
/// tag outside [`MANIFEST_FORMATS_READ`] rather than guess what a newer format means.
///
/// Version 2 makes `privacy.groups_suppressed` optional: it is stated only for public key
/// sets, where it counts the cells marked on a noisy count; for other keys it would count
/// groups that exist, so it is left out.
pub const MANIFEST_FORMAT: &str = "veil-product-manifest/2";

/// The format tags this verifier reads: every version's manifest parses into [`Manifest`] and
/// canonicalises to the bytes that were signed.
pub const MANIFEST_FORMATS_READ: [&str; 2] = ["veil-product-manifest/1", MANIFEST_FORMAT];

/// The only signature algorithm this format knows.
pub const SIGNATURE_ALGORITHM: &str = "ed25519";

/// Prefixed to the canonical bytes before signing, so a manifest signature can never be
/// replayed as the signature of anything else the platform key signs (the audit checkpoint).
pub const SIGNING_DOMAIN: &[u8] = b"veil-manifest-v1\n";

/// Prefixed to an audit checkpoint's fields before signing (see [`AuditCheckpoint`]), so a
/// checkpoint signature can never pass for a manifest signature or the other way round.
pub const CHECKPOINT_SIGNING_DOMAIN: &[u8] = b"veil audit checkpoint v2\n";

/// The largest `manifest.json` a verifier reads. Real manifests are a few kilobytes; the
/// limit keeps a hostile file from exhausting memory before its signature is checked.
pub const MANIFEST_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// The buffer for streaming a result file through BLAKE3, so a large file is never read
/// into memory whole.
const HASH_BUFFER_BYTES: usize = 64 * 1024;

/// What the platform states about one released product.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The product's id (`prod-…`), as the platform's API names it.
    pub product_id: String,
    /// The job that released the product.
    pub job_id: String,
    /// BLAKE3 hex digest of the approved template the job ran.
    pub template_id: String,
    /// The template's name, as its operator gave it.
    pub template_name: String,
    /// The name of the operator that ran the job and owns the product.
    pub operator: String,
    /// The purpose of the authorization (grant) the job ran under.
    pub purpose: String,
    /// Who owns this product, as the grant it was made under states it (Order 266 art. 12):
    /// `operator`, `bureau` or `shared`. Absent in products made before grants stated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Every dataset the job read.
    pub sources: Vec<SourceDataset>,
    /// The protection the release applied: what a buyer may rely on about the figures.
    pub privacy: PrivacyRecord,
    /// The result's columns, in order, and what each one is.
    pub columns: Vec<ColumnDescription>,
    /// Rows in the released result (the same in every file).
    pub rows: u64,
    /// Every file of the product except `manifest.json`.
    pub files: Vec<FileDigest>,
    /// The platform's audit checkpoint current when the product was written: a witness of
    /// the audit log's history up to that entry. Absent in products released before
    /// checkpoints were exported (it is then left out of the canonical bytes too, so their
    /// signatures still verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_checkpoint: Option<AuditCheckpoint>,
}

/// A signed checkpoint of the platform's audit log: entry `seq` of the hash chain has hash
/// `hash`. The platform exports one after every change (`audit.checkpoints` in its store) and
/// copies the current one into each manifest.
///
/// The signature is Ed25519 by the platform key over
///
/// ```text
/// "veil audit checkpoint v2\n" ‖ seq ‖ "\n" ‖ hash ‖ "\n" ‖ keyed_from
/// ```
///
/// (numbers in decimal). `keyed_from` is the first entry whose hash is keyed with the
/// platform's secret; entries before it were written by a Veil that hashed without a key and
/// were carried over when the store was upgraded. It is signed so that nobody can move it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpoint {
    /// The sequence number of the audit log entry the checkpoint witnesses (the log's head
    /// when the checkpoint was made).
    pub seq: i64,
    /// The entry's hash, 64 hex digits.
    pub hash: String,
    /// The sequence number of the first entry whose hash is keyed with the platform's secret
    /// (see above).
    pub keyed_from: i64,
    /// The 64-byte Ed25519 signature, hex.
    pub signature: String,
}

impl AuditCheckpoint {
    /// The bytes the signature covers.
    pub fn signed_message(seq: i64, hash: &str, keyed_from: i64) -> Vec<u8> {
        let mut message = CHECKPOINT_SIGNING_DOMAIN.to_vec();
        message.extend_from_slice(format!("{seq}\n{hash}\n{keyed_from}").as_bytes());
        message
    }

    /// Signs a checkpoint with the platform key.
    pub fn sign(seq: i64, hash: String, keyed_from: i64, key: &SigningKey) -> Self {
        let signature = key.sign(&Self::signed_message(seq, &hash, keyed_from));
        Self {
            seq,
            hash,
            keyed_from,
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// True when `key` signed exactly these fields.
    pub fn is_signed_by(&self, key: &VerifyingKey) -> bool {
        decode_fixed::<64>(&self.signature).is_some_and(|value| {
            key.verify_strict(
                &Self::signed_message(self.seq, &self.hash, self.keyed_from),
                &ed25519_dalek::Signature::from_bytes(&value),
            )
            .is_ok()
        })
    }
}

/// One in-domain dataset the product was computed from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceDataset {
    /// The dataset's id on the platform (`ds-…`).
    pub dataset_id: String,
    /// The dataset's name, as a template's SQL reads it.
    pub name: String,
    /// The organisation that provided the data.
    pub provider: String,
    /// The acquisition date (获取日期), `YYYY-MM-DD`, which every product must print.
    pub acquired_on: String,
    /// The data classification its policy states: 1 public, 2 internal, 3 sensitive, 4 core.
    pub classification_level: u8,
    /// BLAKE3 hex digest of the dataset's content at the time of the run.
    pub content_blake3: String,
    /// The version of the dataset's data the run read (1 for its first registration; each new
    /// file the bureau registers for it is the next). Absent in products made before
    /// datasets had versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// The privacy protection the release gate applied.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrivacyRecord {
    /// The ε of the whole release, per privacy unit, as the bureau approved it; the draws in
    /// `noise_scales` split it between them.
    pub epsilon: f64,
    /// The δ of the whole release, as the bureau approved it: it bounds the chance that a
    /// group of fewer than `k` units is shown.
    pub delta: f64,
    /// For example "laplace (OpenDP make_laplace, discrete on integers)".
    pub mechanism: String,
    /// The k of k-anonymity: distinct privacy units a released group needed.
    pub k: u32,
    /// The most groups one privacy unit may contribute to; its contributions beyond were
    /// dropped before any noise, which bounds each draw's sensitivity.
    pub max_groups_per_unit: u32,
    /// The most rows one privacy unit may contribute to one group; the rest were dropped.
    pub max_rows_per_group: u32,
    /// Groups (result rows) released.
    pub groups_released: u64,
    /// With public key sets: how many keys were marked because their noisy count of distinct
    /// units was below k (their measures are NULL). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_suppressed: Option<u64>,
    /// The DP existence threshold τ, when group keys were not from a public key set.
    pub threshold: Option<f64>,
    /// Every noisy draw of the release: the distinct-unit count first, then each measure.
    pub noise_scales: Vec<NoiseScale>,
    /// Zero-concentrated DP runs (the Gaussian mechanism): the ρ the draws split, and how it
    /// converts to the approved (ε, δ). Absent for Laplace releases (pure ε per draw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounting: Option<Accounting>,
    /// The accuracy stated before the run, per output column: what a buyer may expect of a
    /// cell, from the noise scales alone (no data). Each cell's own interval is in the
    /// `<column>_ci_low` / `<column>_ci_high` columns of the result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accuracy: Vec<ColumnAccuracy>,
    /// How many privacy units lost contributions to the contribution bounds (a noisy count):
    /// when it is not small, totals are truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contributions_dropped: Option<ContributionsDropped>,
    /// Statistical disclosure rules applied to sums beyond k (p % rule, (n, k) dominance),
    /// with the cells they protected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disclosure: Vec<DisclosureReport>,
    /// What post-processing did to the noisy values (costs no privacy): rounding, averages
    /// kept inside their bounds, counts kept non-negative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_processing: Option<String>,
}

/// How a zero-concentrated DP release meets its approved (ε, δ).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Accounting {
    /// "zCDP".
    pub measure: String,
    /// ρ of the Gaussian draws, together (each draw's share is in its noise scale).
    pub rho: f64,
    /// δ of the existence threshold (OpenDP's thresholded Gaussian), 0 with public keys.
    pub threshold_delta: f64,
    /// The ε OpenDP's zCDP conversion gives for all draws together at the approved δ
    /// (at most the approved ε).
    pub epsilon: f64,
    /// The approved δ.
    pub delta: f64,
    /// How the conversion was made.
    pub conversion: String,
}

/// What the release states about one output column's accuracy, from the noise scales alone.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ColumnAccuracy {
    /// The output column.
    pub column: String,
    /// "count", "sum" or "average".
    pub kind: String,
    /// The confidence of the interval, e.g. 0.95.
    pub confidence: f64,
    /// The interval's half-width: the released value is within ± this of the true (bounded)
    /// value with the stated confidence. Counts and sums: in the column's unit, for every
    /// cell. Averages: for the smallest group the release can show (`at_units`); larger
    /// groups are more accurate.
    pub error: f64,
    /// Averages: the group size the error is stated at (k).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_units: Option<u64>,
    /// The error as a share of what the column can span in the smallest group: the bounds'
    /// width for averages, k × the width for sums, k for counts.
    pub share: f64,
    /// Set when the share is above what the platform calls usable, saying what to change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// How many units the contribution bounds cut, as a noisy count.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContributionsDropped {
    /// The noisy count of privacy units that had groups beyond `max_groups_per_unit` or rows
    /// beyond `max_rows_per_group` dropped (never below 0).
    pub units_noisy: i64,
    /// Its 95 % interval's half-width.
    pub error: f64,
}

/// One disclosure rule as applied to one sum column.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DisclosureReport {
    /// The sum column.
    pub column: String,
    /// "p% rule (p = 10)" or "(n, k) dominance (n = 2, k = 85)".
    pub rule: String,
    /// Cells the rule protected: their sum (and interval) is NULL.
    pub cells_protected: u64,
    /// How the decision was made.
    pub decided_on: String,
}

/// The noise added to one released column.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NoiseScale {
    /// What the draw measures, e.g. `distinct units` or `income (sum)`.
    pub column: String,
    /// Its share of the release's ε.
    pub epsilon: f64,
    /// Its sensitivity over all groups (L1 for Laplace, L2 for Gaussian): the most one
    /// privacy unit can change the true values, given the contribution bounds.
    pub sensitivity: f64,
    /// The scale of the noise added: Laplace `sensitivity / epsilon` (discrete Laplace on
    /// integers); Gaussian σ = `sensitivity / √(2ρ)`.
    pub scale: f64,
    /// The mechanism, e.g. "discrete Laplace (OpenDP make_laplace)". Absent in manifests
    /// made before it was stated (they are Laplace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
    /// Gaussian draws: its share of the release's ρ (zero-concentrated DP); `epsilon` is then 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
    /// The significance α of `half_width`, e.g. 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// The noise stays within ± this with probability 1 − α (OpenDP's accuracy functions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_width: Option<f64>,
}

/// One column of the released result.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ColumnDescription {
    /// The column's name in the result files.
    pub name: String,
    /// "group key", "noisy count", "noisy sum" or "noisy average".
    pub kind: String,
}

/// The size and digest of one product file.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// A plain file name inside the product folder, never a path.
    pub name: String,
    /// The file's size in bytes.
    pub bytes: u64,
    /// BLAKE3 hex digest of the file's bytes.
    pub blake3: String,
}

/// The platform's signature over a manifest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Always [`SIGNATURE_ALGORITHM`].
    pub algorithm: String,
    /// The platform's Ed25519 public key, hex.
    pub public_key: String,
    /// The 64-byte signature, hex.
    pub value: String,
}

/// The content of `manifest.json`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// What the platform states about the product.
    pub manifest: Manifest,
    /// The platform's signature over the manifest's canonical bytes.
    pub signature: Signature,
}

/// A product folder that passed [`verify_product_dir`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedProduct {
    /// The manifest, whose signature and files were checked.
    pub manifest: Manifest,
    /// True when the caller pinned the platform key and the manifest was signed by it. When
    /// false, the files match what the signer stated, but nothing says who the signer was.
    pub key_pinned: bool,
}

/// Why a manifest could not be put into canonical form or signed. These are faults of the
/// signer (the platform), never of a buyer.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest's `format` is not [`MANIFEST_FORMAT`]: only the current format is signed.
    #[error(
        "the manifest's format is not {MANIFEST_FORMAT}; set `format` to MANIFEST_FORMAT before signing"
    )]
    WrongFormat,
    /// A number of the manifest is NaN or infinite, which JSON cannot carry.
    #[error(
        "manifest field {field} is not a finite number; JSON cannot carry NaN or infinity, so the release must record a finite value"
    )]
    NotFinite {
        /// The field's path, e.g. `privacy.noise_scales[0].scale`.
        field: String,
    },
    /// `serde_json` could not write the manifest (a platform bug).
    #[error("internal error: the manifest could not be serialized as JSON ({0})")]
    Serialize(#[source] serde_json::Error),
}

/// Why a product folder or a signed manifest did not verify. Each message names the file
/// and says what to do; none carries the contents of a file.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The folder holds no `manifest.json`.
    #[error(
        "{MANIFEST_FILE} not found in {}; a product folder holds its files and {MANIFEST_FILE} — download the whole product again", dir.display()
    )]
    ManifestMissing {
        /// The folder that was checked.
        dir: PathBuf,
    },
    /// A file or the folder could not be read (permissions, a failing disk).
    #[error("{}: cannot be read ({source}); check the path and permissions", path.display())]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// `manifest.json` is larger than [`MANIFEST_BYTES_MAX`]; it was not parsed.
    #[error(
        "{MANIFEST_FILE}: larger than {MANIFEST_BYTES_MAX} bytes, so it is not a Veil manifest — download the product again"
    )]
    ManifestTooLarge,
    /// `manifest.json` is not JSON of a [`SignedManifest`] (or has fields the format does not
    /// know).
    #[error(
        "{MANIFEST_FILE}: not a valid Veil manifest ({category} error at line {line}, column {column}); the file is damaged or not from Veil — download the product again"
    )]
    ManifestMalformed {
        /// What kind of parse error: `read`, `syntax`, `structure` or `truncated`.
        category: &'static str,
        /// The line of the error, from 1.
        line: usize,
        /// The column of the error, from 1.
        column: usize,
    },
    /// The manifest's format is not one of [`MANIFEST_FORMATS_READ`].
    #[error(
        "{MANIFEST_FILE}: declares a format this verifier does not read (it reads veil-product-manifest/1 and /2); use a verifier that supports that format"
    )]
    UnsupportedFormat,
    /// The signature's algorithm is not [`SIGNATURE_ALGORITHM`].
    #[error(
        "{MANIFEST_FILE}: signed with an algorithm other than {SIGNATURE_ALGORITHM}; this verifier cannot check it"
    )]
    UnsupportedAlgorithm,
    /// The public key embedded in the signature is not a valid Ed25519 key.
    #[error(
        "{MANIFEST_FILE}: the embedded public key is not 32 bytes of hex forming a valid Ed25519 key; the file is damaged — download the product again"
    )]
    BadPublicKey,
    /// The manifest names a signing key other than the one the caller pinned: the product
    /// is not from that platform.
    #[error(
        "{MANIFEST_FILE}: signed by a different key than the platform key you pinned; the product did not come from that platform — do not use it, and obtain it from the platform directly"
    )]
    KeyMismatch,
    /// The signature value is not 64 bytes of hex.
    #[error(
        "{MANIFEST_FILE}: the signature value is not 64 bytes of hex; the file is damaged — download the product again"
    )]
    BadSignatureEncoding,
    /// The signature does not cover this manifest: the manifest was changed after signing.
    #[error(
        "{MANIFEST_FILE}: the signature does not match the manifest; the manifest was changed after signing — download the product again"
    )]
    BadSignature,
    /// The manifest's audit checkpoint is not signed by the manifest's signer, so it is no
    /// witness of the platform's audit log.
    #[error(
        "{MANIFEST_FILE}: the audit checkpoint it carries is not signed by the key that signed the manifest; do not use this product, and report it to the platform's bureau"
    )]
    BadAuditCheckpoint,
    /// The manifest has no canonical form (a number that is not finite), so no signature
    /// can cover it.
    #[error("{MANIFEST_FILE}: cannot be put into canonical form: {0}")]
    Canonical(#[source] ManifestError),
    /// A file entry's name is a path, `.`, `..`, empty or `manifest.json`, which could reach
    /// outside the folder or shadow the manifest.
    #[error(
        "{MANIFEST_FILE}: file entry number {index} is not a plain file name inside the product folder; do not use this product"
    )]
    UnsafeFileName {
        /// The entry's position in the manifest's `files`, from 0.
        index: usize,
    },
    /// The manifest lists one file name twice.
    #[error(
        "{MANIFEST_FILE}: lists {name} more than once; the manifest is inconsistent — do not use this product"
    )]
    DuplicateFile {
        /// The name listed twice.
        name: String,
    },
    /// A listed file is not in the folder.
    #[error(
        "{name}: listed in the manifest but missing from the folder — download the whole product again"
    )]
    FileMissing {
        /// The missing file's name.
        name: String,
    },
    /// A listed name is a folder, a link or another non-regular file; links are never
    /// followed.
    #[error(
        "{name}: not a regular file (a folder or a link); a product holds plain files only — download the product again"
    )]
    NotAFile {
        /// The name in the folder.
        name: String,
    },
    /// A file's size differs from the manifest's.
    #[error(
        "{name}: {actual} bytes, but the manifest records {expected}; the file is incomplete or was changed after release — download it again"
    )]
    SizeMismatch {
        /// The file's name.
        name: String,
        /// The size the manifest records, in bytes.
        expected: u64,
        /// The size found, in bytes.
        actual: u64,
    },
    /// A file's BLAKE3 digest differs from the manifest's: its content was changed.
    #[error(
        "{name}: BLAKE3 digest does not match the manifest; the file was changed after release — download it again"
    )]
    DigestMismatch {
        /// The file's name.
        name: String,
    },
    /// The folder holds something the manifest does not list, which the signature does not
    /// vouch for.
    #[error(
        "{name}: in the product folder but not listed in the manifest; remove it, or download the product again into an empty folder"
    )]
    UnlistedFile {
        /// The unlisted name, as the folder spells it (lossily, if it is not UTF-8).
        name: String,
    },
}

/// The bytes the signature covers (without the domain prefix): the manifest as compact JSON
/// with object keys sorted.
///
/// The writer below sorts keys itself instead of relying on `serde_json`'s map type, because
/// any crate in a build may turn on `serde_json/preserve_order`, which would silently change
/// the order and break every signature.
pub fn canonical_bytes(manifest: &Manifest) -> Result<Vec<u8>, ManifestError> {
    check_finite(manifest)?;
    let value = serde_json::to_value(manifest).map_err(ManifestError::Serialize)?;
    let mut out = Vec::new();
    write_canonical(&value, &mut out).map_err(ManifestError::Serialize)?;
    Ok(out)
}

/// Signs `manifest` with the platform key.
pub fn sign(manifest: Manifest, key: &SigningKey) -> Result<SignedManifest, ManifestError> {
    if manifest.format != MANIFEST_FORMAT {
        return Err(ManifestError::WrongFormat);
    }
    let message = signed_message(&manifest)?;
    let signature = key.sign(&message);
    Ok(SignedManifest {
        manifest,
        signature: Signature {
            algorithm: SIGNATURE_ALGORITHM.to_owned(),
            public_key: hex::encode(key.verifying_key().as_bytes()),
            value: hex::encode(signature.to_bytes()),
        },
    })
}

/// Checks the signature of `signed`. With `expected_key`, the manifest must be signed by that
/// key; without it, by the key it embeds (which proves integrity, not origin).
pub fn verify_signature(
    signed: &SignedManifest,
    expected_key: Option<&VerifyingKey>,
) -> Result<(), VerifyError> {
    if !MANIFEST_FORMATS_READ.contains(&signed.manifest.format.as_str()) {
        return Err(VerifyError::UnsupportedFormat);
    }
    let signature = &signed.signature;
    if signature.algorithm != SIGNATURE_ALGORITHM {
        return Err(VerifyError::UnsupportedAlgorithm);
    }
    let embedded = decode_fixed::<32>(&signature.public_key)
        .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
        .ok_or(VerifyError::BadPublicKey)?;
    if let Some(expected) = expected_key
        && expected.as_bytes() != embedded.as_bytes()
    {
        return Err(VerifyError::KeyMismatch);
    }
    let value = decode_fixed::<64>(&signature.value).ok_or(VerifyError::BadSignatureEncoding)?;
    let message = signed_message(&signed.manifest).map_err(VerifyError::Canonical)?;
    // `verify_strict` also refuses small-order keys and non-canonical signatures, so one
    // manifest cannot carry two different valid signatures.
    embedded
        .verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&value))
        .map_err(|_| VerifyError::BadSignature)?;
    // The platform signed the manifest with the checkpoint in it, but the checkpoint is a
    // witness only if it carries the platform's own signature as well.
    match &signed.manifest.audit_checkpoint {
        Some(checkpoint) if !checkpoint.is_signed_by(&embedded) => {
            Err(VerifyError::BadAuditCheckpoint)
        }
        _ => Ok(()),
    }
}

/// Verifies a downloaded product folder: the signature of `manifest.json`, then the size and
/// BLAKE3 digest of every listed file, then that the folder holds nothing unlisted.
pub fn verify_product_dir(
    dir: &Path,
    expected_key: Option<&VerifyingKey>,
) -> Result<VerifiedProduct, VerifyError> {
    let signed = read_manifest(dir)?;
    verify_signature(&signed, expected_key)?;
    let files = &signed.manifest.files;

    for (index, entry) in files.iter().enumerate() {
        if !is_plain_file_name(&entry.name) {
            return Err(VerifyError::UnsafeFileName { index });
        }
        if files[..index].iter().any(|f| f.name == entry.name) {
            return Err(VerifyError::DuplicateFile {
                name: entry.name.clone(),
            });
        }
    }
    for entry in files {
        verify_file(dir, entry)?;
    }

    let listing = std::fs::read_dir(dir).map_err(|source| VerifyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for item in listing {
        let item = item.map_err(|source| VerifyError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = item.file_name();
        let listed = name
            .to_str()
            .is_some_and(|n| n == MANIFEST_FILE || files.iter().any(|f| f.name == n));
        if !listed {
            return Err(VerifyError::UnlistedFile {
                name: name.to_string_lossy().into_owned(),
            });
        }
    }

    Ok(VerifiedProduct {
        manifest: signed.manifest,
        key_pinned: expected_key.is_some(),
    })
}

fn signed_message(manifest: &Manifest) -> Result<Vec<u8>, ManifestError> {
    let mut message = SIGNING_DOMAIN.to_vec();
    message.extend_from_slice(&canonical_bytes(manifest)?);
    Ok(message)
}

/// `serde_json` turns NaN and infinity into `null`, which would sign a value different from
/// the one in memory and then fail to parse back into an `f64`; refuse them up front.
fn check_finite(manifest: &Manifest) -> Result<(), ManifestError> {
    let privacy = &manifest.privacy;
    let mut numbers = vec![
        ("privacy.epsilon".to_owned(), privacy.epsilon),
        ("privacy.delta".to_owned(), privacy.delta),
    ];
    if let Some(threshold) = privacy.threshold {
        numbers.push(("privacy.threshold".to_owned(), threshold));
    }
    for (i, noise) in privacy.noise_scales.iter().enumerate() {
        numbers.push((format!("privacy.noise_scales[{i}].epsilon"), noise.epsilon));
        numbers.push((
            format!("privacy.noise_scales[{i}].sensitivity"),
            noise.sensitivity,
        ));
        numbers.push((format!("privacy.noise_scales[{i}].scale"), noise.scale));
    }
    match numbers.into_iter().find(|(_, n)| !n.is_finite()) {
        Some((field, _)) => Err(ManifestError::NotFinite { field }),
        None => Ok(()),
    }
}

/// Writes `value` as compact JSON with object keys sorted by their bytes.
fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            serde_json::to_writer(&mut *out, value)
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
            Ok(())
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_canonical(item, out)?;
            }
            out.push(b'}');
            Ok(())
        }
    }
}

fn decode_fixed<const N: usize>(text: &str) -> Option<[u8; N]> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
}

/// A name that stays inside the product folder: no separators, not `.` or `..`, not the
/// manifest itself, not empty.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name != MANIFEST_FILE
        && !name.contains(['/', '\\', '\0'])
}

/// Parses the platform's public key as `GET /v1/platform/key` and `veil platform-key` give
/// it: 64 hex digits.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| "a public key is 64 hex digits (32 bytes)".to_string())?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "those 32 bytes are not a valid Ed25519 public key".to_string())
}

/// Reads and parses a product folder's manifest, without checking its signature or files.
pub fn read_manifest(dir: &Path) -> Result<SignedManifest, VerifyError> {
    let path = dir.join(MANIFEST_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(VerifyError::ManifestMissing {
                dir: dir.to_path_buf(),
            });
        }
        Err(source) => return Err(VerifyError::Io { path, source }),
    };
    let mut text = Vec::new();
    // One byte past the limit tells a file at the limit from a larger one.
    file.take(MANIFEST_BYTES_MAX + 1)
        .read_to_end(&mut text)
        .map_err(|source| VerifyError::Io {
            path: path.clone(),
            source,
        })?;
    if text.len() as u64 > MANIFEST_BYTES_MAX {
        return Err(VerifyError::ManifestTooLarge);
    }
    // The parser's own message may quote a value from the file, so only its position and
    // category are kept.
    serde_json::from_slice(&text).map_err(|e| VerifyError::ManifestMalformed {
        category: match e.classify() {
            serde_json::error::Category::Io => "read",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "structure",
            serde_json::error::Category::Eof => "truncated",
        },
        line: e.line(),
        column: e.column(),
    })
}

fn verify_file(dir: &Path, entry: &FileDigest) -> Result<(), VerifyError> {
    let path = dir.join(&entry.name);
    let name = || entry.name.clone();
    // `symlink_metadata` does not follow links, so a link pointing outside the folder is
    // refused instead of hashed.
    let metadata = match std::fs::symlink_metadata(&path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(VerifyError::FileMissing { name: name() });
        }
        Err(source) => return Err(VerifyError::Io { path, source }),
    };
    if !metadata.file_type().is_file() {
        return Err(VerifyError::NotAFile { name: name() });
    }
    if metadata.len() != entry.bytes {
        return Err(VerifyError::SizeMismatch {
            name: name(),
            expected: entry.bytes,
            actual: metadata.len(),
        });
    }
    let io_error = |source| VerifyError::Io {
        path: path.clone(),
        source,
    };
    let mut file = File::open(&path).map_err(io_error)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    let mut total: u64 = 0;
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(io_error(source)),
        };
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
    // The file may have changed between the size check and the read.
    if total != entry.bytes {
        return Err(VerifyError::SizeMismatch {
            name: name(),
            expected: entry.bytes,
            actual: total,
        });
    }
    let digest = hasher.finalize();
    let matches = blake3::Hash::from_hex(entry.blake3.as_bytes()).is_ok_and(|h| h == digest);
    if !matches {
        return Err(VerifyError::DigestMismatch { name: name() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blake3_hex(bytes: &[u8]) -> String {
        blake3::hash(bytes).to_hex().to_string()
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.to_owned(),
            product_id: "prod-1".to_owned(),
            job_id: "job-1".to_owned(),
            template_id: blake3_hex(b"SELECT city, COUNT(*) FROM t GROUP BY city"),
            template_name: "firms per city".to_owned(),
            operator: "Shanxi Data Operations Co.".to_owned(),
            purpose: "regional economic statistics".to_owned(),
            ownership: Some("operator".to_owned()),
            created_at: "2025-03-01T08:00:00Z".to_owned(),
            sources: vec![SourceDataset {
                dataset_id: "ds-1".to_owned(),
                name: "enterprise registry".to_owned(),
                provider: "market regulation bureau".to_owned(),
                acquired_on: "2025-01-15".to_owned(),
                classification_level: 2,
                content_blake3: blake3_hex(b"dataset"),
                version: Some(1),
            }],
            privacy: PrivacyRecord {
                epsilon: 1.0,
                delta: 1e-6,
                mechanism: "laplace (OpenDP make_laplace, discrete on integers)".to_owned(),
                k: 10,
                max_groups_per_unit: 1,
                max_rows_per_group: 1,
                groups_released: 11,
                groups_suppressed: Some(0),
                threshold: None,
                noise_scales: vec![NoiseScale {
                    column: "firms".to_owned(),
                    epsilon: 1.0,
                    sensitivity: 1.0,
                    scale: 1.0,
                    ..NoiseScale::default()
                }],
                ..PrivacyRecord::default()
            },
            columns: vec![
                ColumnDescription {
                    name: "city".to_owned(),
                    kind: "group key".to_owned(),
                },
                ColumnDescription {
                    name: "firms".to_owned(),
                    kind: "noisy count".to_owned(),
                },
            ],
            rows: 11,
            files: vec![FileDigest {
                name: "result.csv".to_owned(),
                bytes: 3,
                blake3: blake3_hex(b"a,b"),
            }],
            audit_checkpoint: None,
        }
    }

    /// Writes `value` as JSON with every object's keys in reverse order.
    fn write_reversed(value: &serde_json::Value, out: &mut String) {
        use serde_json::Value;
        match value {
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_reversed(item, out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| b.0.cmp(a.0));
                out.push_str("{\n");
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(",\n");
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push_str(" : ");
                    write_reversed(v, out);
                }
                out.push_str("\n}");
            }
            other => out.push_str(&other.to_string()),
        }
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let key = key(7);
        let signed = sign(manifest(), &key).expect("sign");
        verify_signature(&signed, None).expect("embedded key");
        verify_signature(&signed, Some(&key.verifying_key())).expect("pinned key");

        let json = serde_json::to_string_pretty(&signed).expect("to json");
        let back: SignedManifest = serde_json::from_str(&json).expect("from json");
        assert_eq!(back, signed);
        verify_signature(&back, Some(&key.verifying_key())).expect("after round trip");
    }

    #[test]
    fn a_changed_field_fails() {
        let signed = sign(manifest(), &key(7)).expect("sign");

        let mut changed = signed.clone();
        changed.manifest.privacy.epsilon = 0.5;
        assert!(matches!(
            verify_signature(&changed, None),
            Err(VerifyError::BadSignature)
        ));

        let mut changed = signed;
        changed.manifest.sources[0].acquired_on = "2025-01-16".to_owned();
        assert!(matches!(
            verify_signature(&changed, None),
            Err(VerifyError::BadSignature)
        ));
    }

    #[test]
    fn a_wrong_pinned_key_fails() {
        let signed = sign(manifest(), &key(7)).expect("sign");
        let other = key(8).verifying_key();
        assert!(matches!(
            verify_signature(&signed, Some(&other)),
            Err(VerifyError::KeyMismatch)
        ));

        // Swapping in the attacker's key and re-signing passes without a pin, which is
        // exactly why buyers should pin the platform key.
        let forged = sign(signed.manifest.clone(), &key(8)).expect("sign");
        verify_signature(&forged, None).expect("self-consistent");
        assert!(matches!(
            verify_signature(&forged, Some(&key(7).verifying_key())),
            Err(VerifyError::KeyMismatch)
        ));
    }

    #[test]
    fn canonical_bytes_ignore_key_order_in_the_file() {
        let key = key(7);
        let signed = sign(manifest(), &key).expect("sign");
        let value = serde_json::to_value(&signed).expect("to value");
        let mut reordered = String::new();
        write_reversed(&value, &mut reordered);
        assert_ne!(reordered, serde_json::to_string(&signed).expect("json"));

        let back: SignedManifest = serde_json::from_str(&reordered).expect("parse reordered");
        assert_eq!(
            canonical_bytes(&back.manifest).expect("canonical"),
            canonical_bytes(&signed.manifest).expect("canonical")
        );
        verify_signature(&back, Some(&key.verifying_key())).expect("verify reordered");
    }

    #[test]
    fn canonical_bytes_are_sorted_and_compact() {
        let bytes = canonical_bytes(&manifest()).expect("canonical");
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.starts_with("{\"columns\":[{\"kind\":\"group key\",\"name\":\"city\"}"));
        assert!(!text.contains(": "));
        assert!(text.contains("\"threshold\":null"));
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        let mut m = manifest();
        m.privacy.noise_scales[0].scale = f64::INFINITY;
        match sign(m, &key(7)) {
            Err(ManifestError::NotFinite { field }) => {
                assert_eq!(field, "privacy.noise_scales[0].scale");
            }
            other => panic!("expected NotFinite, got {other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let signed = sign(manifest(), &key(7)).expect("sign");
        let mut value = serde_json::to_value(&signed).expect("to value");
        value["manifest"]["note"] = serde_json::Value::String("unsigned".to_owned());
        assert!(serde_json::from_value::<SignedManifest>(value).is_err());
    }

    #[test]
    fn an_audit_checkpoint_rides_along_only_with_the_platform_signature() {
        // Without a checkpoint the field is left out of the canonical bytes, so manifests
        // signed before the field existed still verify.
        let bytes = canonical_bytes(&manifest()).expect("canonical");
        assert!(!String::from_utf8_lossy(&bytes).contains("audit_checkpoint"));

        let platform = key(7);
        let hash = blake3_hex(b"entry 41");
        let mut m = manifest();
        m.audit_checkpoint = Some(AuditCheckpoint::sign(41, hash.clone(), 1, &platform));
        let signed = sign(m.clone(), &platform).expect("sign");
        verify_signature(&signed, Some(&platform.verifying_key())).expect("verifies");
        let checkpoint = signed.manifest.audit_checkpoint.as_ref().expect("kept");
        assert!(checkpoint.is_signed_by(&platform.verifying_key()));
        assert!(!checkpoint.is_signed_by(&key(8).verifying_key()));

        // Each signed field counts: another sequence number, hash or key boundary fails.
        for changed in [
            AuditCheckpoint {
                seq: 40,
                ..checkpoint.clone()
            },
            AuditCheckpoint {
                hash: blake3_hex(b"entry 40"),
                ..checkpoint.clone()
            },
            AuditCheckpoint {
                keyed_from: 2,
                ..checkpoint.clone()
            },
        ] {
            assert!(
                !changed.is_signed_by(&platform.verifying_key()),
                "{changed:?}"
            );
        }

        // A checkpoint signed by someone else, in a manifest the platform signed, is refused.
        m.audit_checkpoint = Some(AuditCheckpoint::sign(41, hash, 1, &key(8)));
        let signed = sign(m, &platform).expect("sign");
        assert!(matches!(
            verify_signature(&signed, Some(&platform.verifying_key())),
            Err(VerifyError::BadAuditCheckpoint)
        ));
    }

    #[test]
    fn unsafe_file_names_are_refused() {
        for name in ["", ".", "..", "../x", "a/b", "a\\b", MANIFEST_FILE] {
            assert!(!is_plain_file_name(name), "{name:?}");
        }
        assert!(is_plain_file_name("result.parquet"));
    }

    #[test]
    fn a_product_folder_verifies_and_a_changed_file_does_not() {
        let dir = std::env::temp_dir().join(format!("veil-sdk-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create dir");
        let body = b"city,firms\nTaiyuan,1200\n";
        std::fs::write(dir.join("result.csv"), body).expect("write");
        let mut m = manifest();
        m.files = vec![FileDigest {
            name: "result.csv".to_owned(),
            bytes: body.len() as u64,
            blake3: blake3_hex(body),
        }];
        let key = key(7);
        let signed = sign(m, &key).expect("sign");
        let json = serde_json::to_vec_pretty(&signed).expect("json");
        std::fs::write(dir.join(MANIFEST_FILE), json).expect("write manifest");

        let verified = verify_product_dir(&dir, Some(&key.verifying_key()));
        let unpinned = verify_product_dir(&dir, None);
        let mut changed = body.to_vec();
        changed[0] ^= 1;
        std::fs::write(dir.join("result.csv"), &changed).expect("write");
        let tampered = verify_product_dir(&dir, None);
        std::fs::remove_dir_all(&dir).expect("clean up");

        assert!(verified.expect("verifies").key_pinned);
        assert!(!unpinned.expect("verifies").key_pinned);
        match tampered {
            Err(e @ VerifyError::DigestMismatch { .. }) => {
                assert!(e.to_string().starts_with("result.csv: BLAKE3"), "{e}");
            }
            other => panic!("expected DigestMismatch, got {other:?}"),
        }
    }
}
