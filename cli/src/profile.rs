//! `veil client --profile FILE`: where the server is and which key to use, kept in a TOML file
//! so neither has to be typed or left in the shell's history.
//!
//! ```toml
//! url = "https://veil.bureau.example"   # the server (or its TLS proxy)
//! token_file = "operator.key"            # a file holding the key; relative to this file
//! ```
//!
//! Each value is taken from its flag (`--url`, `--token`), else its environment variable
//! (`VEIL_URL`, `VEIL_TOKEN`), else the profile. The key stays in its own file, readable by
//! its owner only: the client warns when others may read it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use veil_runtime::error::{Error, Result};

/// Largest profile or token file read, in bytes.
pub(crate) const PROFILE_FILE_BYTES_MAX: u64 = 64 * 1024;

/// A client profile file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profile {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
}

impl Profile {
    /// The profile in `path`; a relative `token_file` is taken from the profile's folder.
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let text = read_small(path, "client profile")?;
        let mut profile: Self = toml::from_str(&text).map_err(|e| {
            Error::invalid(format!(
                "the client profile {} is not valid: {} (keys: url, token_file)",
                path.display(),
                e.message()
            ))
        })?;
        if let Some(file) = &profile.token_file
            && file.is_relative()
        {
            let base = path.parent().unwrap_or_else(|| Path::new("."));
            profile.token_file = Some(base.join(file));
        }
        Ok(profile)
    }

    /// The key in the profile's token file, if it names one.
    pub(crate) fn token(&self) -> Result<Option<String>> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        warn_if_shared(path);
        let key = read_small(path, "token file")?.trim().to_string();
        if key.is_empty() {
            return Err(Error::invalid(format!(
                "the token file {} is empty; put the key from `veil principal add` in it",
                path.display()
            )));
        }
        Ok(Some(key))
    }
}

/// The server and key a client command uses: flag or environment (as clap merged them), else
/// the profile. Names what is missing and every place it may come from.
pub(crate) fn connection(
    url: Option<String>,
    token: Option<String>,
    profile: Option<&Path>,
) -> Result<(String, String)> {
    let profile = match profile {
        Some(path) => Profile::read(path)?,
        None => Profile::default(),
    };
    let url = url.or(profile.url.clone()).ok_or_else(|| {
        Error::invalid("name the server: --url, VEIL_URL, or url in the --profile file")
    })?;
    let token = match token {
        Some(token) => token,
        None => profile.token()?.ok_or_else(|| {
            Error::invalid(
                "give your key: --token, VEIL_TOKEN, or token_file in the --profile file",
            )
        })?,
    };
    Ok((url, token))
}

fn read_small(path: &Path, what: &str) -> Result<String> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::invalid(format!("cannot read the {what} {}: {e}", path.display())))?
        .len();
    if size > PROFILE_FILE_BYTES_MAX {
        return Err(Error::invalid(format!(
            "the {what} {} is {size} bytes; it should hold a few lines (at most {PROFILE_FILE_BYTES_MAX} bytes)",
            path.display()
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("cannot read the {what} {}: {e}", path.display())))
}

/// A key file others can read is a key others hold: say so, as ssh does.
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "veil client: warning: the token file {} may be read by other users; `chmod 600` it",
            path.display()
        );
    }
}
