//! Principals and their API keys: who may call the service, in which role.
//!
//! A principal is an organisation in one role — the bureau, a data provider, an authorized
//! operator or a product buyer — with a unique name (an operator's name is the `operator` of
//! its templates, grants and jobs). `veil principal add` makes one and prints its API key once.
//! The store keeps only a BLAKE3 hash of the key (derived with its own context string), so a
//! copy of the database does not let anyone act as a principal. Keys are 256 random bits from
//! the operating system; no key is made if the random source fails.

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

/// Adds a principal and returns it with its API key, which is not stored and cannot be shown
/// again.
pub fn add(store: &mut Store, role: Role, name: &str) -> Result<(Principal, ApiKey)> {
    let name = name.trim();
    if name.is_empty() || name.len() > NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "give the principal a name of 1–{NAME_BYTES_MAX} bytes without control characters (--name)"
        )));
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|_| {
        Error::internal("the operating system's random source failed; no key was made")
    })?;
    let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
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

/// The principal a presented key belongs to, if the key is known and not revoked.
pub fn authenticate(store: &Store, key: &str) -> Result<Option<Principal>> {
    if !key.starts_with(KEY_PREFIX) || key.len() != KEY_PREFIX.len() + 64 {
        return Ok(None);
    }
    let principal = store
        .conn()
        .query_row(
            &format!("SELECT {COLUMNS} FROM principals WHERE key_hash = ?1"),
            [key_hash(key)],
            row_to_principal,
        )
        .optional()?
        .transpose()?;
    Ok(principal.filter(|p| p.revoked_at.is_none()))
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

const COLUMNS: &str = "id, role, name, created_at, revoked_at";

fn row_to_principal(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Principal>> {
    let role: String = row.get(1)?;
    let (id, name, created_at, revoked_at) = (row.get(0)?, row.get(2)?, row.get(3)?, row.get(4)?);
    Ok(parse_role(&role).map(|role| Principal {
        id,
        role,
        name,
        created_at,
        revoked_at,
    }))
}

pub fn get(store: &Store, id: &str) -> Result<Principal> {
    store
        .conn()
        .query_row(
            &format!("SELECT {COLUMNS} FROM principals WHERE id = ?1 OR name = ?1"),
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
        &format!("SELECT {COLUMNS} FROM principals ORDER BY created_at, id"),
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
