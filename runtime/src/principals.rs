//! Principals and their API keys: who may call the service, in which role.
//!
//! A principal is an organisation in one role — the bureau, a data provider, an authorized
//! operator or a product buyer — with a unique name (an operator's name is the `operator` of
//! its templates, grants and jobs). `veil principal add` makes one and prints its API key once.
//! The store keeps only a BLAKE3 hash of the key (derived with its own context string), so a
//! copy of the database does not let anyone act as a principal. Keys are 256 random bits from
//! the operating system; no key is made if the random source fails.
//!
//! `veil principal rotate` replaces a principal's key: the new key is printed once, the old one
//! stops working in the same transaction, and the identity (id, name, role, and so every
//! grant, template, job and purchase) stays. A rotated key may carry an expiry; past it the
//! key is refused (HTTP 401) with a message saying to ask the bureau for a new one.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::PrincipalId;
use crate::store::{Store, query_parsed_rows};
use crate::{audit, clock};

/// What every key starts with, so a leaked key is easy to recognise in logs and scanners.
pub const KEY_PREFIX: &str = "veil_";
const KEY_HASH_CONTEXT: &str = "veil api key v1";
/// Longest principal name, in bytes.
pub const NAME_BYTES_MAX: usize = 100;
/// Longest validity a rotated key may be given, in days (ten years).
pub const KEY_EXPIRY_DAYS_MAX: u32 = 3_660;

/// The four kinds of organisation (the wire type, shared with clients).
pub use veil_sdk::api::Role;

/// Parses a role's name, with an error that lists the four.
pub fn parse_role(text: &str) -> Result<Role> {
    Role::parse(text).ok_or_else(|| {
        Error::invalid(format!(
            "role `{text}` is not one of bureau, provider, operator, buyer"
        ))
    })
}

/// A stored principal (never its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub id: String,
    pub role: Role,
    pub name: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// When the current key stops working (RFC 3339, UTC); none: it does not expire.
    #[serde(default)]
    pub key_expires_at: Option<String>,
}

/// An API key, as shown once to the principal it was made for.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A key never reaches a log through Debug.
        f.write_str("ApiKey(…)")
    }
}

fn key_hash(key: &str) -> String {
    hex::encode(blake3::derive_key(KEY_HASH_CONTEXT, key.as_bytes()))
}

/// A fresh key: 256 bits from the operating system's random source.
fn new_key() -> Result<String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|_| {
        Error::internal("the operating system's random source failed; no key was made")
    })?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(secret)))
}

/// Adds a principal and returns it with its API key, which is not stored and cannot be shown
/// again.
pub fn add(store: &mut Store, role: Role, name: &str) -> Result<(Principal, ApiKey)> {
    let name = name.trim();
    if name.is_empty() || name.len() > NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "give the principal a name of 1–{NAME_BYTES_MAX} bytes without control characters (--name)"
        )));
    }
    let key = new_key()?;
    let id = PrincipalId::random().to_string();
    let now = clock::format(clock::now());
    store.write(|tx| {
        let taken: Option<String> = tx
            .query_row(
                "SELECT role FROM principals WHERE name = ?1",
                [name],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(role) = taken {
            return Err(Error::invalid(format!(
                "a principal named `{name}` already exists (role {role}); choose another name"
            )));
        }
        tx.execute(
            "INSERT INTO principals (id, role, name, key_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, role.as_str(), name, key_hash(&key), now],
        )?;
        audit::append(
            tx,
            "bureau",
            &id,
            audit::Event::PrincipalAdded { role, name },
        )?;
        Ok(())
    })?;
    Ok((get(store, &id)?, ApiKey(key)))
}

/// What a presented key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key is a principal's current key, not revoked and not expired.
    Valid(Principal),
    /// No principal has this key now (never made, replaced by a rotation, or revoked).
    Unknown,
    /// The key was the principal's current key until it expired.
    Expired(Principal),
}

/// The message for a key past its expiry: what the holder does next.
pub fn expired_message(principal: &Principal) -> String {
    format!(
        "the API key of `{}` expired at {}; ask the bureau for a new key (the bureau rotates it)",
        principal.name,
        principal
            .key_expires_at
            .as_deref()
            .unwrap_or("an earlier time"),
    )
}

/// Checks a presented key: whose it is, and whether it still works.
pub fn check_key(store: &Store, key: &str) -> Result<KeyCheck> {
    check_key_at(store, key, clock::now())
}

fn check_key_at(store: &Store, key: &str, now: chrono::DateTime<chrono::Utc>) -> Result<KeyCheck> {
    if !key.starts_with(KEY_PREFIX) || key.len() != KEY_PREFIX.len() + 64 {
        return Ok(KeyCheck::Unknown);
    }
    check_fingerprint_at(store, &key_hash(key), now)
}

/// What a front end that signed a principal in with a key keeps instead of the key (the web
/// console's session): the keyed hash the store itself keeps, so a rotation or revocation
/// ends the session at its next request.
pub fn key_fingerprint(key: &str) -> String {
    key_hash(key)
}

/// [`check_key`] for a key known only by its [`key_fingerprint`].
pub fn check_fingerprint(store: &Store, fingerprint: &str) -> Result<KeyCheck> {
    check_fingerprint_at(store, fingerprint, clock::now())
}

fn check_fingerprint_at(
    store: &Store,
    fingerprint: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<KeyCheck> {
    let principal = store
        .conn()
        .query_row(
            &format!("SELECT {COLUMNS} FROM {FROM} WHERE key_hash = ?1"),
            [fingerprint],
            row_to_principal,
        )
        .optional()?
        .transpose()?;
    let Some(principal) = principal else {
        return Ok(KeyCheck::Unknown);
    };
    if principal.revoked_at.is_some() {
        return Ok(KeyCheck::Unknown);
    }
    if let Some(expires_at) = &principal.key_expires_at {
        let expires_at = chrono::DateTime::parse_from_rfc3339(expires_at)
            .map_err(|_| Error::internal("reading a key's stored expiry"))?;
        if now >= expires_at {
            return Ok(KeyCheck::Expired(principal));
        }
    }
    Ok(KeyCheck::Valid(principal))
}

/// The principal a presented key belongs to, if the key is known, not revoked and not expired.
pub fn authenticate(store: &Store, key: &str) -> Result<Option<Principal>> {
    Ok(match check_key(store, key)? {
        KeyCheck::Valid(principal) => Some(principal),
        KeyCheck::Unknown | KeyCheck::Expired(_) => None,
    })
}

/// Gives a principal (by id or name) a new key and returns it, shown once. The old key stops
/// working in the same transaction; the identity stays, so the principal's grants, templates,
/// jobs and purchases stay its own. A revoked principal is active again with the new key: this
/// is how the bureau replaces a key it revoked because it leaked. With `expires_in_days` the
/// new key stops working that many days from now; without, it does not expire.
pub fn rotate(
    store: &mut Store,
    id_or_name: &str,
    expires_in_days: Option<u32>,
) -> Result<(Principal, ApiKey)> {
    let expires_at = match expires_in_days {
        None => None,
        Some(days) if (1..=KEY_EXPIRY_DAYS_MAX).contains(&days) => Some(clock::format(
            clock::now() + chrono::Duration::days(i64::from(days)),
        )),
        Some(days) => {
            return Err(Error::invalid(format!(
                "--expires-in-days is {days}; give 1 to {KEY_EXPIRY_DAYS_MAX} days, or leave it out for a key that does not expire"
            )));
        }
    };
    let id = get(store, id_or_name)?.id;
    let key = new_key()?;
    store.write(|tx| {
        tx.execute(
            "UPDATE principals SET key_hash = ?1, revoked_at = NULL WHERE id = ?2",
            params![key_hash(&key), id],
        )?;
        tx.execute(
            "DELETE FROM principal_key_expiry WHERE principal_id = ?1",
            [&id],
        )?;
        if let Some(at) = &expires_at {
            tx.execute(
                "INSERT INTO principal_key_expiry (principal_id, expires_at) VALUES (?1, ?2)",
                params![id, at],
            )?;
        }
        audit::append(
            tx,
            "bureau",
            &id,
            audit::Event::PrincipalKeyRotated {
                key_expires_at: expires_at.as_deref(),
            },
        )?;
        Ok(())
    })?;
    Ok((get(store, &id)?, ApiKey(key)))
}

/// Revokes a principal's key: it authenticates no more. The principal's records stay.
pub fn revoke(store: &mut Store, id: &str) -> Result<Principal> {
    let now = clock::format(clock::now());
    store.write(|tx| {
        let changed = tx.execute(
            "UPDATE principals SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            params![now, id],
        )?;
        if changed != 1 {
            return Err(Error::invalid(format!(
                "no active principal `{id}`; `veil principal list` shows them"
            )));
        }
        audit::append(tx, "bureau", id, audit::Event::PrincipalRevoked)?;
        Ok(())
    })?;
    get(store, id)
}

const COLUMNS: &str = "id, role, name, created_at, revoked_at, expires_at";
/// The principals with their key's expiry, if any.
const FROM: &str = "principals LEFT JOIN principal_key_expiry ON principal_key_expiry.principal_id = principals.id";

fn row_to_principal(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Principal>> {
    let role: String = row.get(1)?;
    let (id, name, created_at, revoked_at) = (row.get(0)?, row.get(2)?, row.get(3)?, row.get(4)?);
    let key_expires_at = row.get(5)?;
    Ok(parse_role(&role).map(|role| Principal {
        id,
        role,
        name,
        created_at,
        revoked_at,
        key_expires_at,
    }))
}

pub fn get(store: &Store, id: &str) -> Result<Principal> {
    store
        .conn()
        .query_row(
            &format!("SELECT {COLUMNS} FROM {FROM} WHERE id = ?1 OR name = ?1"),
            [id],
            row_to_principal,
        )
        .optional()?
        .transpose()?
        .ok_or_else(|| Error::NotFound {
            kind: "principal",
            id: id.to_string(),
            hint: "; `veil principal list` shows them",
        })
}

pub fn list(store: &Store) -> Result<Vec<Principal>> {
    query_parsed_rows(
        store.conn(),
        &format!("SELECT {COLUMNS} FROM {FROM} ORDER BY created_at, id"),
        [],
        row_to_principal,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_authenticates_its_principal_until_revoked_and_is_never_stored() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::internal(e.to_string()))?;
        let mut store = Store::init(&dir.path().join("store"))?;
        let (operator, key) = add(&mut store, Role::Operator, "jinyun-data-operations")?;
        let (buyer, buyer_key) = add(&mut store, Role::Buyer, "taiyuan-planning-institute")?;
        assert_eq!(authenticate(&store, key.expose())?, Some(operator.clone()));
        assert_eq!(
            authenticate(&store, buyer_key.expose())?.map(|p| p.role),
            Some(Role::Buyer)
        );
        assert_ne!(key, buyer_key);
        // A wrong or malformed key is no one.
        let mut wrong = key.expose().to_string();
        wrong.pop();
        wrong.push(if key.expose().ends_with('0') {
            '1'
        } else {
            '0'
        });
        assert_eq!(authenticate(&store, &wrong)?, None);
        assert_eq!(authenticate(&store, "")?, None);
        assert_eq!(format!("{key:?}"), "ApiKey(…)");
        // The key's text is nowhere in the store's files.
        store
            .conn()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        for entry in std::fs::read_dir(dir.path().join("store"))
            .map_err(|e| Error::internal(e.to_string()))?
        {
            let path = entry.map_err(|e| Error::internal(e.to_string()))?.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).map_err(|e| Error::internal(e.to_string()))?;
                let needle = &key.expose().as_bytes()[KEY_PREFIX.len()..];
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{}",
                    path.display()
                );
            }
        }
        // Names are unique; revoking ends the key's use, once.
        assert!(add(&mut store, Role::Buyer, "jinyun-data-operations").is_err());
        revoke(&mut store, &operator.id)?;
        assert_eq!(authenticate(&store, key.expose())?, None);
        assert!(revoke(&mut store, &operator.id).is_err());
        assert_eq!(list(&store)?.len(), 2);
        let kinds: Vec<String> = store
            .conn()
            .prepare("SELECT kind FROM audit WHERE kind LIKE 'principal.%' ORDER BY seq")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        assert_eq!(
            kinds,
            ["principal.added", "principal.added", "principal.revoked"]
        );
        let _ = buyer;
        Ok(())
    }

    #[test]
    fn rotating_replaces_the_key_keeps_the_identity_and_an_expired_key_is_told_apart() -> Result<()>
    {
        let dir = tempfile::tempdir().map_err(|e| Error::internal(e.to_string()))?;
        let mut store = Store::init(&dir.path().join("store"))?;
        let (operator, old) = add(&mut store, Role::Operator, "jinyun-data-operations")?;
        let (rotated, new) = rotate(&mut store, "jinyun-data-operations", None)?;
        assert_eq!(
            (rotated.id.as_str(), rotated.role),
            (operator.id.as_str(), Role::Operator)
        );
        assert_ne!(old, new);
        assert_eq!(check_key(&store, old.expose())?, KeyCheck::Unknown);
        assert_eq!(authenticate(&store, new.expose())?, Some(rotated));
        // Out of range expiries are refused naming the flag.
        let error = rotate(&mut store, &operator.id, Some(0)).expect_err("0 days");
        assert!(error.to_string().contains("--expires-in-days"), "{error}");
        // A key with an expiry works until then and is told apart afterwards.
        let (expiring, key) = rotate(&mut store, &operator.id, Some(2))?;
        let expires_at = expiring.key_expires_at.clone().unwrap_or_default();
        let expires_at = chrono::DateTime::parse_from_rfc3339(&expires_at)
            .map_err(|e| Error::internal(e.to_string()))?
            .with_timezone(&chrono::Utc);
        let second = chrono::Duration::seconds(1);
        assert!((expires_at - clock::now() - chrono::Duration::days(2)).abs() <= second * 5);
        assert!(matches!(
            check_key_at(&store, key.expose(), expires_at - second)?,
            KeyCheck::Valid(_)
        ));
        let check = check_key_at(&store, key.expose(), expires_at)?;
        let KeyCheck::Expired(principal) = check else {
            panic!("expired, not {check:?}");
        };
        assert!(expired_message(&principal).contains("ask the bureau for a new key"));
        // A revoked principal is active again with a rotated key.
        revoke(&mut store, &operator.id)?;
        let (back, key) = rotate(&mut store, &operator.id, None)?;
        assert_eq!(back.revoked_at, None);
        assert_eq!(back.key_expires_at, None);
        assert!(matches!(
            check_key(&store, key.expose())?,
            KeyCheck::Valid(_)
        ));
        let kinds: Vec<String> = store
            .conn()
            .prepare("SELECT kind FROM audit WHERE kind LIKE 'principal.%' ORDER BY seq")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        assert_eq!(
            kinds,
            [
                "principal.added",
                "principal.key_rotated",
                "principal.key_rotated",
                "principal.revoked",
                "principal.key_rotated"
            ]
        );
        Ok(())
    }

    #[test]
    fn a_version_2_store_is_upgraded_on_open() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::internal(e.to_string()))?;
        let root = dir.path().join("store");
        let store = Store::init(&root)?;
        store.conn().execute_batch(
            "DROP TABLE principals; DROP TABLE job_submissions; DROP TABLE grant_requests;
             ALTER TABLE jobs DROP COLUMN requested_grant;
             UPDATE meta SET value = '2' WHERE key = 'schema_version';",
        )?;
        drop(store);
        let mut store = Store::open(&root)?;
        let (principal, key) = add(&mut store, Role::Provider, "shanxi-hrss")?;
        assert_eq!(authenticate(&store, key.expose())?, Some(principal));
        Ok(())
    }
}
