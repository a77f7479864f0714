//! Job templates as an operator writes them: the spec the bureau approves, its canonical bytes
//! (whose BLAKE3 hash is the template id) and the template file format.
//!
//! The server checks a spec's rules and binds its parameters (`veil_runtime::templates`);
//! these types are shared so a client can read a template file, compute the id it will get,
//! and submit it.
//!
//! Template file format:
//!
//! ```toml
//! name = "income_by_city_gender"
//! sql = """
//! SELECT city, gender, COUNT(DISTINCT person_id) AS persons, AVG(monthly_income) AS avg_income
//! FROM social_insurance WHERE year = :year GROUP BY city, gender
//! """
//! [[params]]
//! name = "year"
//! type = "integer"              # integer | text
//! allowed = ["2023", "2024", "2025"]   # optional
//! ```
//!
//! A WASM template adds a `[wasm]` table: the mapper module (a file next to the template),
//! the input SQL that chooses the rows it sees, and its declared output. `sql` is then the
//! release SQL over the mapper's output, the table `mapped`:
//!
//! ```toml
//! name = "pension_eligibility_by_city"
//! sql = "SELECT city, COUNT(DISTINCT person_id) AS persons, SUM(eligible) AS eligible FROM mapped GROUP BY city"
//! [wasm]
//! module = "pension_eligibility.wasm"
//! input_sql = "SELECT person_id, city, birth_year, contribution_months, year FROM social_insurance"
//! max_rows_per_unit = 1        # output rows one unit may contribute
//! fallback = "default"         # a failed unit contributes the defaults (or "none": nothing)
//! [[wasm.output]]
//! name = "eligible"
//! type = "integer"             # integer (bounds or keys) | float (bounds) | text (keys)
//! bounds = [0, 1]
//! default = 0
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The layout version inside a template's canonical bytes.
pub const TEMPLATE_FORMAT: &str = "veil-template/1";
/// Largest WASM module accepted, in bytes (the host checks the same limit).
pub const MODULE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Why a template file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TemplateFileError {
    /// The file is not TOML of a template: the message is the TOML parser's, with the line.
    #[error("template file: {0}")]
    Syntax(String),
    /// The WASM module the `[wasm]` table names could not be read.
    #[error(
        "the WASM module {path} cannot be read ({error}); build it with `cargo build --release --target wasm32-unknown-unknown`"
    )]
    Module {
        /// The module's path, relative paths joined to the template file's folder.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The module is larger than [`MODULE_BYTES_MAX`]; the server would refuse it.
    #[error("the module is {len} bytes; the limit is {max} bytes")]
    ModuleTooLarge {
        /// The module's size, in bytes.
        len: u64,
        /// The limit, [`MODULE_BYTES_MAX`] bytes.
        max: usize,
    },
}

/// A parameter's type.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A signed 64-bit integer, given as its decimal digits.
    Integer,
    /// A string. Either type is bound as a typed value, never spliced into the SQL text.
    Text,
}

/// A declared parameter.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// The name the SQL uses as `:name`; every placeholder must be declared, and every
    /// declared parameter used.
    pub name: String,
    /// The value's type (`type` in the file and in JSON).
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// The only values a job may give, written as text; omitted, any value of the type.
    /// The bureau approves the template with this list, so it bounds what runs can ask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
}

/// What the operator submits. Its canonical bytes define the template id.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// A name for people (jobs may name the template by it); it is part of the id.
    pub name: String,
    /// The query (SQL templates) or the release SQL over `mapped` (WASM templates).
    pub sql: String,
    /// The parameters the SQL takes, in order.
    #[serde(default)]
    pub params: Vec<ParamSpec>,
    /// The mapper of a WASM template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmSpec>,
    /// Datasets this template reads at a fixed version (dataset name → version), e.g. to
    /// keep a yearly statistic on the data it was approved on; every other dataset is read
    /// at its latest version. Part of the id when not empty (`[versions]` in a template file).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, u32>,
}

/// The type of a declared output column.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputType {
    /// Signed 64-bit integers; needs either `bounds` (to sum it) or `keys` (to group by it).
    Integer,
    /// Floats (a mapper may also answer integers, which are widened); needs `bounds` and no
    /// `keys`.
    Float,
    /// Text; needs `keys` and no `bounds`.
    Text,
}

/// One declared output column of a mapper.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The column's name in `mapped`, and in the mapper's output batch.
    pub name: String,
    /// The column's type (`type` in the file and in JSON). A mapper answering another type
    /// fails its unit.
    #[serde(rename = "type")]
    pub kind: OutputType,
    /// `[lo, hi]` for numbers: values are clamped into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<[f64; 2]>,
    /// Every value a text (or integer) column may take; others become null. Such a column
    /// may be a group key of the release SQL, and its groups are public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    /// The value a failed unit contributes, when the fallback is `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
}

/// What a unit whose call failed (trap, limit, bad output) contributes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Nothing.
    #[default]
    None,
    /// One row of the declared defaults.
    Default,
}

/// The WASM part of a template, with the module identified by its BLAKE3 digest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmSpec {
    /// The BLAKE3 digest of the mapper module, 64 hex digits; upload the module first
    /// (`POST /v1/modules`).
    pub module_blake3: String,
    /// The SQL that chooses the rows the mapper sees, over the grant's datasets. It must
    /// output the privacy-unit column: each call of the mapper gets one unit's rows.
    pub input_sql: String,
    /// The mapper's declared output columns: the columns of `mapped` beside the unit.
    pub output: Vec<OutputSpec>,
    /// The most output rows one unit contributes; the host keeps the first ones.
    pub max_rows_per_unit: u32,
    /// What a unit whose call failed contributes; omitted, nothing.
    #[serde(default)]
    pub fallback: Fallback,
}

/// The `[wasm]` table of a template file: like [`WasmSpec`] but naming the module's file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WasmFile {
    module: PathBuf,
    input_sql: String,
    #[serde(default)]
    output: Vec<OutputSpec>,
    max_rows_per_unit: u32,
    #[serde(default)]
    fallback: Fallback,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    name: String,
    sql: String,
    #[serde(default)]
    params: Vec<ParamSpec>,
    wasm: Option<WasmFile>,
    #[serde(default)]
    versions: BTreeMap<String, u32>,
}

#[derive(Serialize)]
struct Canonical<'a> {
    format: &'static str,
    kind: &'static str,
    name: &'a str,
    sql: &'a str,
    params: &'a [ParamSpec],
    #[serde(skip_serializing_if = "Option::is_none")]
    wasm: Option<&'a WasmSpec>,
    // Left out when empty, so the ids of templates that pin nothing are what they always were.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    versions: &'a BTreeMap<String, u32>,
}

impl TemplateSpec {
    /// Reads a template file whose relative paths (the WASM module) start at `base`, and
    /// returns the module's bytes with the spec.
    pub fn from_file(
        text: &str,
        base: &Path,
    ) -> Result<(Self, Option<Vec<u8>>), TemplateFileError> {
        let file: TemplateFile =
            toml::from_str(text).map_err(|e| TemplateFileError::Syntax(e.to_string()))?;
        let (wasm, module) = match file.wasm {
            None => (None, None),
            Some(w) => {
                let (spec, bytes) = WasmSpec::from_module_file(
                    &base.join(&w.module),
                    w.input_sql,
                    w.output,
                    w.max_rows_per_unit,
                    w.fallback,
                )?;
                (Some(spec), Some(bytes))
            }
        };
        Ok((
            Self {
                name: file.name,
                sql: file.sql,
                params: file.params,
                wasm,
                versions: file.versions,
            },
            module,
        ))
    }

    /// The bytes the template id hashes: the exact SQL text, the parameter declarations and
    /// (WASM) the module digest and declared output, in a fixed JSON layout.
    pub fn canonical_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&Canonical {
            format: TEMPLATE_FORMAT,
            kind: if self.wasm.is_some() { "wasm" } else { "sql" },
            name: &self.name,
            sql: &self.sql,
            params: &self.params,
            wasm: self.wasm.as_ref(),
            versions: &self.versions,
        })
    }

    /// The id the bureau will know this template by: the BLAKE3 hash of its canonical bytes,
    /// as 64 hex digits.
    pub fn template_id(&self) -> Result<String, serde_json::Error> {
        Ok(blake3::hash(&self.canonical_json()?).to_hex().to_string())
    }
}

impl OutputSpec {
    /// True when a default is declared and is a value of this column: of its type, within its
    /// `bounds` and among its `keys` where those are declared.
    pub fn default_fits(&self) -> bool {
        let Some(value) = &self.default else {
            return false;
        };
        match self.kind {
            OutputType::Integer => value.as_i64().is_some_and(|v| {
                self.bounds
                    .is_none_or(|[lo, hi]| (lo..=hi).contains(&(v as f64)))
                    && self
                        .keys
                        .as_ref()
                        .is_none_or(|keys| keys.contains(&v.to_string()))
            }),
            OutputType::Float => value
                .as_f64()
                .is_some_and(|v| self.bounds.is_none_or(|[lo, hi]| (lo..=hi).contains(&v))),
            OutputType::Text => value
                .as_str()
                .is_some_and(|v| self.keys.as_ref().is_some_and(|k| k.iter().any(|x| x == v))),
        }
    }
}

impl WasmSpec {
    /// A spec naming the module at `path` by its digest, with the module's bytes.
    pub fn from_module_file(
        path: &Path,
        input_sql: String,
        output: Vec<OutputSpec>,
        max_rows_per_unit: u32,
        fallback: Fallback,
    ) -> Result<(Self, Vec<u8>), TemplateFileError> {
        let module_error = |error| TemplateFileError::Module {
            path: path.to_path_buf(),
            error,
        };
        let len = std::fs::metadata(path).map_err(module_error)?.len();
        if len > MODULE_BYTES_MAX as u64 {
            return Err(TemplateFileError::ModuleTooLarge {
                len,
                max: MODULE_BYTES_MAX,
            });
        }
        let bytes = std::fs::read(path).map_err(module_error)?;
        let spec = Self {
            module_blake3: blake3::hash(&bytes).to_hex().to_string(),
            input_sql,
            output,
            max_rows_per_unit,
            fallback,
        };
        Ok((spec, bytes))
    }
}
