//! The platform's Ed25519 signing key, which signs every product manifest and the audit
//! checkpoint. Buyers verify products offline against its public half.

use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::{Error, Result};

/// A new key from the operating system's secure random source.
pub fn generate() -> Result<SigningKey> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| Error::internal(format!("reading the OS random source for a key: {e}")))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Loads the key file written by `veil init` (64 hex digits).
pub fn load(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading key", path, e))?;
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            Error::invalid(format!(
                "{} is not a Veil platform key (64 hex digits expected)",
                path.display()
            ))
        })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Parses a public key given as 64 hex digits (what `veil platform-key` prints).
pub fn parse_public(text: &str) -> Result<VerifyingKey> {
    veil_sdk::manifest::parse_public_key(text).map_err(Error::invalid)
}
