//! Errors, sorted by whose fault they are (see `shared/STYLE.md`, rule 4).
//!
//! | variant | whose fault | what the caller does |
//! |---|---|---|
//! | [`Error::Refused`] | the operator's: the job or template breaks a rule | change the job; every rule is named |
//! | [`Error::Invalid`] | whoever gave the input (a flag, a file) | fix the input as the message says |
//! | [`Error::NotFound`] | the caller named something that does not exist | check the id |
//! | [`Error::Policy`] | the bureau's: a dataset policy does not fit its data | fix the policy file |
//! | [`Error::Conflict`] | the caller's: the request contradicts the current state | read the state, then retry differently |
//! | [`Error::Forbidden`] | the caller's: its role may not do this | use a principal of the right role |
//! | [`Error::Resources`] | nobody's: a limit was reached | retry later or ask for a higher limit |
//! | [`Error::StorageFull`] | nobody's: the store's disk is full | the bureau frees space; then retry |
//! | [`Error::Internal`] | the platform's: an invariant broke | report it; the message names the step |
//!
//! No message may carry a value read from inside the domain. Messages from DataFusion reach
//! this type only through `veil_gate::sandbox::SandboxError`, which has already dropped them.
//!
//! The platform's faults ([`Error::Internal`], [`Error::StorageFull`]) may name a path of the
//! store or carry an I/O or SQLite error: that text is for the domain's own records, never for
//! an operator. Over HTTP a fixed sentence replaces it and the detail goes to the server's log
//! (`veil-server`'s `error`); a job that fails records for its operator one of the fixed
//! sentences of `jobs` (its `Failure` can hold no other), and the detail goes to the job's
//! audit entry, for the bureau.

use std::path::Path;

use veil_gate::rules::Refusal;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    Invalid(String),
    #[error("{kind} `{id}` does not exist{hint}")]
    NotFound {
        kind: &'static str,
        id: String,
        hint: &'static str,
    },
    #[error("the policy does not fit the data:\n{}", bullet_list(.0))]
    Policy(Vec<String>),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Resources(String),
    /// The file system holding the store has no space left (`ENOSPC`, `EDQUOT`, or SQLite's
    /// `SQLITE_FULL`). Built by [`Error::storage_full`] so every message says what to do.
    #[error("{0}")]
    StorageFull(String),
    #[error("internal error while {0}")]
    Internal(String),
}

impl From<veil_gate::policy::PolicyError> for Error {
    fn from(error: veil_gate::policy::PolicyError) -> Self {
        Self::Policy(error.0)
    }
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
            hint: "",
        }
    }

    pub fn internal(context: impl Into<String>) -> Self {
        Self::Internal(context.into())
    }

    /// The store's disk is full while `doing` something.
    pub fn storage_full(doing: impl std::fmt::Display) -> Self {
        Self::StorageFull(format!(
            "the platform's storage is full (while {doing}); the bureau must free disk space on the store's file system, then try again"
        ))
    }

    /// Wraps a file-system error with the path and what Veil was doing. A full disk becomes
    /// [`Error::StorageFull`], so callers can tell it from a broken invariant.
    pub fn io(doing: &str, path: &Path, error: std::io::Error) -> Self {
        if crate::space::is_full_error(&error) {
            return Self::storage_full(format_args!("{doing} {}", path.display()));
        }
        Self::Internal(format!("{doing} {}: {error}", path.display()))
    }

    /// True when the error is the store's disk being full.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::StorageFull(_))
    }

    /// The process exit code the `veil` binary uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Refused(_) => 3,
            Self::Invalid(_)
            | Self::NotFound { .. }
            | Self::Policy(_)
            | Self::Conflict(_)
            | Self::Forbidden(_) => 2,
            Self::Resources(_) => 4,
            Self::StorageFull(_) => 6,
            Self::Internal(_) => 1,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return Self::storage_full("writing the state database");
        }
        // SQLite errors concern Veil's own state tables, never in-domain rows.
        Self::Internal(format!("using the state database: {error}"))
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

fn bullet_list(items: &[String]) -> String {
    items
        .iter()
        .map(|item| format!("  - {item}"))
        .collect::<Vec<_>>()
        .join("\n")
}
