//! Newtype identifiers, so passing a job id where a product id belongs is a compile error.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Prefix of every id of this kind.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id (64 bits from the OS random source).
            pub fn random() -> Self {
                Self(format!("{}{}", $prefix, random_hex()))
            }

            /// Wraps a stored or user-given id. It is only trusted after a lookup finds it.
            pub fn new(text: impl Into<String>) -> Self {
                Self(text.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A registered dataset.
    DatasetId, "ds-"
);
id_type!(
    /// An authorization (grant) of datasets to an operator.
    GrantId, "gr-"
);
id_type!(
    /// One run of a template.
    JobId, "job-"
);
id_type!(
    /// A released data product.
    ProductId, "prod-"
);
id_type!(
    /// A buyer's purchase of a product.
    PurchaseId, "pur-"
);
id_type!(
    /// An organisation with an API key (bureau, provider, operator, buyer).
    PrincipalId, "pr-"
);

/// A template is named by the BLAKE3 hash of its canonical bytes (64 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TemplateId(String);

impl TemplateId {
    pub fn of_bytes(canonical: &[u8]) -> Self {
        Self(blake3::hash(canonical).to_hex().to_string())
    }

    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TemplateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Money in fen (1/100 yuan). Never a float.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Fen(pub i64);

impl fmt::Display for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}¥{}.{:02}", abs / 100, abs % 100)
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    // The OS random source failing is not something a caller can act on; fall back to the
    // clock so ids stay unique in practice, and never panic.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = crate::clock::now()
            .timestamp_nanos_opt()
            .unwrap_or_default();
        bytes = nanos.to_le_bytes();
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fen_prints_as_yuan() {
        assert_eq!(Fen(123_456).to_string(), "¥1234.56");
        assert_eq!(Fen(-5).to_string(), "-¥0.05");
    }

    #[test]
    fn ids_carry_their_prefix() {
        assert!(JobId::random().as_str().starts_with("job-"));
        assert_ne!(JobId::random(), JobId::random());
    }
}
