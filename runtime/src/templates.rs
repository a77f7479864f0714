//! Job templates: what an operator submits and the bureau approves.
//!
//! A template is SQL text with named parameters (`:city`) and a declaration of each
//! parameter's type and allowed values. It is identified by the BLAKE3 hash of its canonical
//! bytes ([`TemplateSpec::canonical_bytes`]): the exact SQL text, byte for byte, and the
//! parameter declarations. Approval pins the privacy parameters (ε, δ, k, contribution
//! limits) and the price; a job runs only a template whose stored bytes still hash to an
//! approved id, so a text that differs by one byte is a different, unapproved template.
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
//! release SQL over the mapper's output, the table `mapped` (the unit column plus the declared
//! columns), and passes the same gate as any SQL job:
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
//! type = "integer"             # integer | float (both need bounds) | text (needs keys)
//! bounds = [0, 1]
//! default = 0
//! ```
//!
//! The template id hashes the module's BLAKE3 digest with everything else, so a changed
//! module is a different, unapproved template.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use veil_gate::sandbox::{ParamValue, SQL_BYTES_MAX, bind_named_parameters};
pub use veil_sdk::template::{
    Fallback, OutputSpec, OutputType, ParamSpec, ParamType, TemplateFileError, TemplateSpec,
    WasmSpec,
};

use crate::error::{Error, Result};
use crate::grants;
use crate::ids::{Fen, TemplateId};
use crate::store::{Store, query_parsed_rows};
use crate::{audit, catalog, clock};
use veil_gate::Terms;
use veil_gate::analysis::{self, Analysis};
use veil_gate::job as exec;
use veil_gate::rules::{Refusal, Rule};

/// Most parameters one template may declare.
pub const TEMPLATE_PARAMS_MAX: usize = 16;
/// Most allowed values one parameter may list.
pub const PARAM_ALLOWED_VALUES_MAX: usize = 1_000;
/// Longest parameter value, in bytes.
pub const PARAM_VALUE_BYTES_MAX: usize = 256;
/// Largest ε the bureau may pin for one run.
pub const RUN_EPSILON_MAX: f64 = 10.0;
/// Largest k the bureau may pin.
pub const K_MAX: u32 = 10_000;
/// Largest contribution limits the bureau may pin.
pub const MAX_GROUPS_PER_UNIT_MAX: u32 = 1_000;
pub const MAX_ROWS_PER_GROUP_MAX: u32 = 10_000;
/// Memory a job may use unless the approval says otherwise, in MiB.
pub const JOB_MEMORY_MIB_DEFAULT: u32 = 1024;
/// Wall-clock time a job may run unless the approval says otherwise, in seconds.
pub const JOB_WALL_SECONDS_DEFAULT: u32 = 300;
const _: () = assert!(
    (JOB_MEMORY_MIB_DEFAULT as usize) * 1024 * 1024 <= veil_gate::sandbox::JOB_MEMORY_BYTES_MAX
);
const _: () =
    assert!((JOB_WALL_SECONDS_DEFAULT as u64) * 1000 <= veil_gate::sandbox::JOB_WALL_MS_MAX);
// A client checks a module's size with the SDK's limit before uploading; the host's is the same.
const _: () =
    assert!(veil_sdk::template::MODULE_BYTES_MAX == veil_gate::sandbox::wasm::MODULE_BYTES_MAX);
/// Largest price per run, in fen (¥1,000,000).
pub const PRICE_PER_RUN_FEN_MAX: i64 = 100_000_000;

/// The table a WASM template's release SQL reads: the mapper's output.
pub use veil_gate::mapping::MAPPED_TABLE;
/// Most output columns a mapper may declare.
pub const OUTPUT_COLUMNS_MAX: usize = 64;
/// Most output rows one unit may be allowed to contribute.
pub const ROWS_PER_UNIT_MAX: u32 = 10_000;

/// The domain's rules on a [`TemplateSpec`] (whose data type lives in `veil_sdk::template`,
/// shared with clients): reading files with errors sorted by fault, the id, static checks,
/// and parameter binding.
pub trait SpecRules: Sized {
    /// Parses a SQL template file's text.
    fn parse(text: &str) -> Result<Self>;
    /// Parses a template file whose relative paths (the WASM module) start at `base`, and
    /// returns the module's bytes with the spec.
    fn parse_file(text: &str, base: &std::path::Path) -> Result<(Self, Option<Vec<u8>>)>;
    /// The bytes the template id hashes ([`TemplateSpec::canonical_json`]).
    fn canonical_bytes(&self) -> Result<Vec<u8>>;
    fn id(&self) -> Result<TemplateId>;
    /// Static checks that need no data: sizes, names, and that the SQL's `:name`
    /// placeholders are exactly the declared parameters.
    fn check(&self) -> Result<(), Refusal>;
    /// Binds the given values to the declared parameters, refusing undeclared, missing,
    /// mistyped and disallowed values.
    fn bind(&self, given: &[(String, String)]) -> Result<Vec<(String, ParamValue)>, Refusal>;
}

/// A template file's problem as a Veil error: a module over the size limit breaks a rule, the
/// rest are bad input.
pub fn file_error(error: TemplateFileError) -> Error {
    match error {
        TemplateFileError::ModuleTooLarge { .. } => {
            Error::Refused(Refusal::one(Rule::WasmModule, error.to_string()))
        }
        other => Error::invalid(other.to_string()),
    }
}

impl SpecRules for TemplateSpec {
    fn parse(text: &str) -> Result<Self> {
        let (spec, module) = Self::parse_file(text, std::path::Path::new("."))?;
        if module.is_some() {
            return Err(Error::invalid(
                "template file: a [wasm] template must be read with its module; submit the file itself",
            ));
        }
        Ok(spec)
    }

    fn parse_file(text: &str, base: &std::path::Path) -> Result<(Self, Option<Vec<u8>>)> {
        Self::from_file(text, base).map_err(file_error)
    }

    fn canonical_bytes(&self) -> Result<Vec<u8>> {
        self.canonical_json()
            .map_err(|e| Error::internal(format!("encoding a template: {e}")))
    }

    fn id(&self) -> Result<TemplateId> {
        Ok(TemplateId::of_bytes(&self.canonical_bytes()?))
    }

    fn check(&self) -> Result<(), Refusal> {
        let mut refusal = Refusal::default();
        if self.name.trim().is_empty() || self.name.len() > 100 {
            refusal.push(
                Rule::StatementParameters,
                "give the template a name of 1–100 bytes",
            );
        }
        if self.sql.len() > SQL_BYTES_MAX {
            refusal.push(
                Rule::StatementParse,
                format!("the SQL is longer than {SQL_BYTES_MAX} bytes"),
            );
        }
        if self.params.len() > TEMPLATE_PARAMS_MAX {
            refusal.push(
                Rule::StatementParameters,
                format!("a template declares at most {TEMPLATE_PARAMS_MAX} parameters"),
            );
        }
        let (_, mut used) = bind_named_parameters(&self.sql);
        if let Some(wasm) = &self.wasm {
            if wasm.input_sql.len() > SQL_BYTES_MAX {
                refusal.push(
                    Rule::StatementParse,
                    format!("the input SQL is longer than {SQL_BYTES_MAX} bytes"),
                );
            }
            let (_, input_used) = bind_named_parameters(&wasm.input_sql);
            for name in input_used {
                if !used.contains(&name) {
                    used.push(name);
                }
            }
            check_wasm_spec(wasm, &mut refusal);
        }
        for name in &used {
            if !self.params.iter().any(|p| &p.name == name) {
                refusal.push(
                    Rule::StatementParameters,
                    format!("the SQL uses `:{name}` but no [[params]] entry declares it"),
                );
            }
        }
        for (index, param) in self.params.iter().enumerate() {
            if !used.contains(&param.name) {
                refusal.push(
                    Rule::StatementParameters,
                    format!(
                        "parameter `{}` is declared but the SQL never uses `:{}`",
                        param.name, param.name
                    ),
                );
            }
            if self.params[..index].iter().any(|p| p.name == param.name) {
                refusal.push(
                    Rule::StatementParameters,
                    format!("parameter `{}` is declared twice", param.name),
                );
            }
            if let Some(allowed) = &param.allowed {
                if allowed.is_empty() || allowed.len() > PARAM_ALLOWED_VALUES_MAX {
                    refusal.push(
                        Rule::StatementParameters,
                        format!(
                            "parameter `{}`: list 1 to {PARAM_ALLOWED_VALUES_MAX} allowed values, or none",
                            param.name
                        ),
                    );
                }
                if param.kind == ParamType::Integer
                    && allowed.iter().any(|v| v.parse::<i64>().is_err())
                {
                    refusal.push(
                        Rule::StatementParameters,
                        format!(
                            "parameter `{}` is an integer; its allowed values must be integers",
                            param.name
                        ),
                    );
                }
            }
        }
        refusal.into_result()
    }

    /// Checks job parameters against the declarations and types them.
    fn bind(&self, given: &[(String, String)]) -> Result<Vec<(String, ParamValue)>, Refusal> {
        let mut refusal = Refusal::default();
        let mut bound = Vec::new();
        for (name, _) in given {
            if !self.params.iter().any(|p| &p.name == name) {
                let declared: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
                refusal.push(
                    Rule::StatementParameters,
                    format!(
                        "parameter `{name}` is not declared by the template; it takes: {}",
                        if declared.is_empty() {
                            "no parameters".to_string()
                        } else {
                            declared.join(", ")
                        }
                    ),
                );
            }
        }
        for param in &self.params {
            let values: Vec<&String> = given
                .iter()
                .filter(|(name, _)| name == &param.name)
                .map(|(_, value)| value)
                .collect();
            let value = match values.as_slice() {
                [] => {
                    refusal.push(
                        Rule::StatementParameters,
                        format!(
                            "parameter `{}` has no value; add --param {}=…",
                            param.name, param.name
                        ),
                    );
                    continue;
                }
                [one] => *one,
                _ => {
                    refusal.push(
                        Rule::StatementParameters,
                        format!("parameter `{}` is given more than once", param.name),
                    );
                    continue;
                }
            };
            if value.len() > PARAM_VALUE_BYTES_MAX {
                refusal.push(
                    Rule::StatementParameters,
                    format!(
                        "parameter `{}` is longer than {PARAM_VALUE_BYTES_MAX} bytes",
                        param.name
                    ),
                );
                continue;
            }
            if let Some(allowed) = &param.allowed
                && !allowed.contains(value)
            {
                refusal.push(
                    Rule::StatementParameters,
                    format!(
                        "parameter `{}` = `{value}` is not one of the approved values: {}",
                        param.name,
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            match param.kind {
                ParamType::Text => {
                    bound.push((param.name.clone(), ParamValue::Text(value.clone())))
                }
                ParamType::Integer => match value.parse::<i64>() {
                    Ok(number) => bound.push((param.name.clone(), ParamValue::Integer(number))),
                    Err(_) => refusal.push(
                        Rule::StatementParameters,
                        format!(
                            "parameter `{}` must be an integer, not `{value}`",
                            param.name
                        ),
                    ),
                },
            }
        }
        refusal.into_result().map(|()| bound)
    }
}

/// The declared output's rules; every problem is pushed with the column it concerns.
fn check_wasm_spec(spec: &WasmSpec, refusal: &mut Refusal) {
    let rule = Rule::WasmOutputSchema;
    if spec.module_blake3.len() != 64 || !spec.module_blake3.bytes().all(|b| b.is_ascii_hexdigit())
    {
        refusal.push(Rule::WasmModule, "`module_blake3` must be 64 hex digits");
    }
    if spec.output.is_empty() || spec.output.len() > OUTPUT_COLUMNS_MAX {
        refusal.push(
            rule,
            format!("declare 1 to {OUTPUT_COLUMNS_MAX} [[wasm.output]] columns"),
        );
    }
    if !(1..=ROWS_PER_UNIT_MAX).contains(&spec.max_rows_per_unit) {
        refusal.push(
            rule,
            format!("`max_rows_per_unit` must be between 1 and {ROWS_PER_UNIT_MAX}"),
        );
    }
    for (index, column) in spec.output.iter().enumerate() {
        let name = &column.name;
        if !crate::catalog::is_plain_identifier(name, 64) {
            refusal.push(
                rule,
                format!("output column `{name}`: use lower-case letters, digits and _ (at most 64 bytes)"),
            );
        }
        if spec.output[..index].iter().any(|c| &c.name == name) {
            refusal.push(rule, format!("output column `{name}` is declared twice"));
        }
        if let Some([lo, hi]) = column.bounds
            && !(lo.is_finite() && hi.is_finite() && lo <= hi)
        {
            refusal.push(
                rule,
                format!("output column `{name}`: bounds must be finite with lo ≤ hi"),
            );
        }
        if let Some(keys) = &column.keys
            && (keys.is_empty() || keys.len() > PARAM_ALLOWED_VALUES_MAX)
        {
            refusal.push(
                rule,
                format!("output column `{name}`: list 1 to {PARAM_ALLOWED_VALUES_MAX} keys"),
            );
        }
        match column.kind {
            OutputType::Float if column.bounds.is_none() => refusal.push(
                rule,
                format!("output column `{name}` is a float; give it bounds = [lo, hi] so one unit's value is capped"),
            ),
            OutputType::Float if column.keys.is_some() => refusal.push(
                rule,
                format!("output column `{name}` is a float; key sets are for text and integer columns"),
            ),
            OutputType::Integer if column.bounds.is_some() == column.keys.is_some() => {
                refusal.push(
                    rule,
                    format!("output column `{name}` is an integer; give it either bounds = [lo, hi] (to sum it) or keys = [...] (to group by it)"),
                )
            }
            OutputType::Integer
                if column
                    .keys
                    .as_ref()
                    .is_some_and(|k| k.iter().any(|v| v.parse::<i64>().is_err())) =>
            {
                refusal.push(
                    rule,
                    format!("output column `{name}` is an integer; its keys must be integers"),
                )
            }
            OutputType::Text if column.keys.is_none() || column.bounds.is_some() => refusal.push(
                rule,
                format!("output column `{name}` is text; give it keys = [...] (every value it may take) and no bounds"),
            ),
            _ => {}
        }
        if spec.fallback == Fallback::Default && !column.default_fits() {
            refusal.push(
                rule,
                format!("output column `{name}`: fallback = \"default\" needs a default of the column's type, inside its bounds or keys"),
            );
        }
    }
}

/// What the bureau pins when approving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// ε spent by one run.
    pub micro_epsilon: veil_gate::terms::MicroEpsilon,
    /// δ spent by one run.
    pub pico_delta: veil_gate::terms::PicoDelta,
    /// Minimum distinct privacy units behind a released group.
    pub k: u32,
    /// Most groups one unit may contribute to.
    pub max_groups: u32,
    /// Most rows one unit may contribute to one group.
    pub max_rows: u32,
    /// Price of one released run.
    pub price_per_run: Fen,
    /// Memory one run may reserve, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Wall-clock time one run's query may take, in seconds.
    #[serde(default = "default_wall_seconds")]
    pub wall_seconds: u32,
    /// WASM templates: fuel one unit's call may burn.
    #[serde(default = "default_wasm_fuel")]
    pub wasm_fuel_per_unit: u64,
    /// WASM templates: linear memory one unit's instance may grow to, in MiB.
    #[serde(default = "default_wasm_memory_mib")]
    pub wasm_memory_mib: u32,
    /// The noise its releases draw; approvals made before the choice existed are Laplace.
    #[serde(default)]
    pub mechanism: veil_gate::terms::Mechanism,
}

fn default_wasm_fuel() -> u64 {
    veil_gate::sandbox::wasm::WasmLimits::default().fuel_per_unit
}

fn default_wasm_memory_mib() -> u32 {
    (veil_gate::sandbox::wasm::WasmLimits::default().memory_bytes / (1024 * 1024)) as u32
}

/// Most fuel the bureau may allow one unit's call (about ten seconds of guest work).
pub const WASM_FUEL_PER_UNIT_MAX: u64 = 10_000_000_000;

fn default_memory_mib() -> u32 {
    JOB_MEMORY_MIB_DEFAULT
}

fn default_wall_seconds() -> u32 {
    JOB_WALL_SECONDS_DEFAULT
}

impl Approval {
    /// The privacy and resource terms the kernel runs a job under (everything but the price).
    pub fn terms(&self) -> Terms {
        Terms {
            micro_epsilon: self.micro_epsilon,
            pico_delta: self.pico_delta,
            k: self.k,
            max_groups: self.max_groups,
            max_rows: self.max_rows,
            memory_mib: self.memory_mib,
            wall_seconds: self.wall_seconds,
            wasm_fuel_per_unit: self.wasm_fuel_per_unit,
            wasm_memory_mib: self.wasm_memory_mib,
            mechanism: self.mechanism,
        }
    }

    /// The sandbox limits this approval pins.
    pub fn limits(&self) -> veil_gate::sandbox::SandboxLimits {
        self.terms().limits()
    }

    /// The per-unit limits a WASM template's mapper runs under.
    pub fn wasm_limits(&self) -> veil_gate::sandbox::wasm::WasmLimits {
        self.terms().wasm_limits()
    }

    pub fn epsilon(&self) -> f64 {
        self.terms().epsilon()
    }

    pub fn delta(&self) -> f64 {
        self.terms().delta()
    }
}

/// The bureau's approval as typed on the command line.
#[derive(Debug, Clone)]
pub struct ApprovalRequest {
    pub epsilon: f64,
    pub delta: f64,
    pub k: u32,
    pub max_groups: u32,
    pub max_rows: u32,
    pub price_per_run_fen: i64,
    pub memory_mib: u32,
    pub wall_seconds: u32,
    pub wasm_fuel_per_unit: u64,
    pub wasm_memory_mib: u32,
    pub mechanism: veil_gate::terms::Mechanism,
}

impl Default for ApprovalRequest {
    /// ε 1, δ 10⁻⁶, k 10, one group and one row per unit, free, default limits.
    fn default() -> Self {
        Self {
            epsilon: 1.0,
            delta: 1e-6,
            k: 10,
            max_groups: 1,
            max_rows: 1,
            price_per_run_fen: 0,
            memory_mib: JOB_MEMORY_MIB_DEFAULT,
            wall_seconds: JOB_WALL_SECONDS_DEFAULT,
            wasm_fuel_per_unit: default_wasm_fuel(),
            wasm_memory_mib: default_wasm_memory_mib(),
            mechanism: veil_gate::terms::Mechanism::Laplace,
        }
    }
}

impl ApprovalRequest {
    fn check(&self) -> Result<Approval> {
        if self.epsilon > RUN_EPSILON_MAX {
            return Err(Error::invalid(format!(
                "--epsilon per run is at most {RUN_EPSILON_MAX}"
            )));
        }
        let micro_epsilon = grants::to_micro(self.epsilon, "--epsilon")?;
        let pico_delta = grants::to_pico(self.delta, "--delta")?;
        if pico_delta == veil_gate::terms::PicoDelta::ZERO {
            return Err(Error::invalid(
                "--delta must be above 0: it bounds the chance that a group's existence leaks through the DP threshold",
            ));
        }
        if !(2..=K_MAX).contains(&self.k) {
            return Err(Error::invalid(format!("--k must be between 2 and {K_MAX}")));
        }
        if !(1..=MAX_GROUPS_PER_UNIT_MAX).contains(&self.max_groups) {
            return Err(Error::invalid(format!(
                "--max-groups must be between 1 and {MAX_GROUPS_PER_UNIT_MAX}"
            )));
        }
        if !(1..=MAX_ROWS_PER_GROUP_MAX).contains(&self.max_rows) {
            return Err(Error::invalid(format!(
                "--max-rows must be between 1 and {MAX_ROWS_PER_GROUP_MAX}"
            )));
        }
        if !(0..=PRICE_PER_RUN_FEN_MAX).contains(&self.price_per_run_fen) {
            return Err(Error::invalid(format!(
                "--price-fen must be between 0 and {PRICE_PER_RUN_FEN_MAX}"
            )));
        }
        let memory_mib_max = (veil_gate::sandbox::JOB_MEMORY_BYTES_MAX / (1024 * 1024)) as u32;
        if !(1..=memory_mib_max).contains(&self.memory_mib) {
            return Err(Error::invalid(format!(
                "--memory-mib must be between 1 and {memory_mib_max}"
            )));
        }
        let wall_seconds_max = (veil_gate::sandbox::JOB_WALL_MS_MAX / 1000) as u32;
        if !(1..=wall_seconds_max).contains(&self.wall_seconds) {
            return Err(Error::invalid(format!(
                "--wall-seconds must be between 1 and {wall_seconds_max}"
            )));
        }
        if !(1..=WASM_FUEL_PER_UNIT_MAX).contains(&self.wasm_fuel_per_unit) {
            return Err(Error::invalid(format!(
                "--wasm-fuel-per-unit must be between 1 and {WASM_FUEL_PER_UNIT_MAX}"
            )));
        }
        let wasm_memory_mib_max =
            (veil_gate::sandbox::wasm::MEMORY_BYTES_CEILING / (1024 * 1024)) as u32;
        if !(1..=wasm_memory_mib_max).contains(&self.wasm_memory_mib) {
            return Err(Error::invalid(format!(
                "--wasm-memory-mib must be between 1 and {wasm_memory_mib_max}"
            )));
        }
        Ok(Approval {
            micro_epsilon,
            pico_delta,
            k: self.k,
            max_groups: self.max_groups,
            max_rows: self.max_rows,
            price_per_run: Fen(self.price_per_run_fen),
            memory_mib: self.memory_mib,
            wall_seconds: self.wall_seconds,
            wasm_fuel_per_unit: self.wasm_fuel_per_unit,
            wasm_memory_mib: self.wasm_memory_mib,
            mechanism: self.mechanism,
        })
    }
}

/// A template's life: submitted → approved | rejected; approved → revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateState {
    Submitted,
    Approved,
    Rejected,
    Revoked,
}

impl TemplateState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Revoked => "revoked",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text {
            "submitted" => Ok(Self::Submitted),
            "approved" => Ok(Self::Approved),
            "rejected" => Ok(Self::Rejected),
            "revoked" => Ok(Self::Revoked),
            _ => Err(Error::internal("reading a template's state")),
        }
    }
}

/// A stored template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub id: TemplateId,
    pub operator: String,
    pub spec: TemplateSpec,
    pub state: TemplateState,
    pub approval: Option<Approval>,
    pub reasons: Option<String>,
    pub submitted_at: String,
    pub decided_at: Option<String>,
}

/// Submits a template the way every front end does (the `veil template submit` command, the
/// HTTP API and so the SDK): [`static_check`] first, so a template the gate would refuse is
/// refused now, with the rules it breaks, rather than after the bureau approved it; then
/// [`submit_with_module`]. Nothing is stored for a refused template.
pub async fn submit_checked(
    store: &mut Store,
    operator: &str,
    spec: TemplateSpec,
    module: Option<Vec<u8>>,
) -> Result<Template> {
    static_check(store, operator, &spec).await?;
    submit_with_module(store, operator, spec, module)
}

/// The gate's static checks on a template, which read no data row: the spec's own rules
/// ([`SpecRules::check`]), then the statement policy and the plan's shape against the tables
/// the operator may read. Those are the tables of the operator's grants in term (the template
/// passes if any one of them admits it, since a job may choose that grant); an operator with
/// no grant yet is checked against the registered datasets its SQL names (a WASM template's
/// input SQL), so a typo or a raw-row query is caught before anyone grants anything.
///
/// A refusal is [`Error::Refused`], naming every rule broken: the same rules over every front
/// end, which map it to the same exit code and HTTP status.
pub async fn static_check(store: &Store, operator: &str, spec: &TemplateSpec) -> Result<()> {
    spec.check()?;
    // A pinned version must exist: checked here so the bureau never approves a template
    // that could not run.
    for (name, version) in &spec.versions {
        let Some(dataset) = catalog::find(store, name)? else {
            return Err(Error::invalid(format!(
                "the template pins a version of `{name}`, which is no registered dataset; name a dataset the SQL reads"
            )));
        };
        catalog::at_version(store, &dataset, *version)?;
    }
    let today = clock::today();
    let active: Vec<grants::Grant> = grants::list(store)?
        .into_iter()
        .filter(|g| g.operator == operator && g.is_in_term(today))
        .collect();
    if active.is_empty() {
        let tables = named_tables(store, spec)?;
        return check_against(store, spec, &tables)
            .await?
            .map(|_| ())
            .map_err(Error::Refused);
    }
    let mut first_refusal = None;
    for grant in &active {
        match check_against(store, spec, &grant_tables(store, grant)?).await? {
            Ok(_) => return Ok(()),
            Err(refusal) => {
                first_refusal.get_or_insert(refusal);
            }
        }
    }
    Err(Error::Refused(first_refusal.unwrap_or_default()))
}

/// The datasets a grant covers, by table name.
fn grant_tables(store: &Store, grant: &grants::Grant) -> Result<analysis::Tables> {
    grant
        .datasets
        .iter()
        .map(|id| catalog::get(store, id.as_str()).map(|d| (d.name.clone(), d)))
        .collect()
}

/// The registered datasets `spec`'s SQL names (a WASM template's input SQL; its release SQL
/// reads only `mapped`), by table name. A name the catalog does not know is left out, so the
/// statement policy refuses it as out of scope.
fn named_tables(store: &Store, spec: &TemplateSpec) -> Result<analysis::Tables> {
    Ok(named_datasets(store, spec)?
        .into_iter()
        .map(|d| (d.name.clone(), d))
        .collect())
}

/// The registered datasets `spec`'s SQL names (a WASM template's input SQL), in the order it
/// names them. The sandbox's parser decides what is SQL; should this parser fail where it
/// would not, every registered dataset is returned rather than none, so a check over them
/// errs on the side of checking too much.
pub fn named_datasets(store: &Store, spec: &TemplateSpec) -> Result<Vec<catalog::Dataset>> {
    let sql = match &spec.wasm {
        Some(wasm) => &wasm.input_sql,
        None => &spec.sql,
    };
    match referenced_tables(sql) {
        Some(names) => names
            .iter()
            .filter_map(|name| catalog::find(store, name).transpose())
            .collect(),
        None => catalog::list(store),
    }
}

/// Checks `spec` against `tables` without reading a row: the statement policy and the plan's
/// shape (for a WASM template, its input plan, declared output and release SQL). Each declared
/// parameter gets a value of its type (its first allowed value, else 0 or the empty text), so
/// planning can type-check the SQL. Submission and `jobs::check_static` both call this one
/// function.
pub(crate) async fn check_against(
    store: &Store,
    spec: &TemplateSpec,
    tables: &analysis::Tables,
) -> Result<Result<Analysis, Refusal>> {
    let sample: Vec<(String, ParamValue)> = spec
        .params
        .iter()
        .map(|p| {
            let first = p.allowed.as_ref().and_then(|a| a.first().cloned());
            let value = match p.kind {
                ParamType::Integer => {
                    ParamValue::Integer(first.and_then(|v| v.parse().ok()).unwrap_or(0))
                }
                ParamType::Text => ParamValue::Text(first.unwrap_or_default()),
            };
            (p.name.clone(), value)
        })
        .collect();
    let data_dir = store.data_dir();
    let checked = match &spec.wasm {
        Some(wasm) => exec::check_wasm(&data_dir, spec, wasm, None, &sample, tables)
            .await
            .map(|checked| checked.map(|(_, analysis)| analysis)),
        None => exec::prepare_sql(&data_dir, spec, None, &sample, tables)
            .await
            .map(|checked| checked.map(|(_, analysis)| analysis)),
    };
    match checked.map_err(|e| Error::internal(format!("checking a template: {e}")))? {
        // A sandbox failure that breaks no rule (a table file it cannot open) is the
        // platform's fault, not a refusal with no reason.
        Err(refusal) if refusal.is_empty() => Err(Error::internal(
            "checking a template: the sandbox failed without naming a rule",
        )),
        verdict => Ok(verdict),
    }
}

/// Stores a submitted template (or returns the existing one with the same bytes), with the
/// spec's own checks but not the gate's: see [`submit_with_module`].
pub fn submit(store: &mut Store, operator: &str, spec: TemplateSpec) -> Result<Template> {
    submit_with_module(store, operator, spec, None)
}

/// Checks a WASM template's module: its bytes must be the ones the spec names, and the host
/// must accept it (valid, only the host ABI, within the limits). The module is compiled only
/// in a child process with limits, and a refusal is remembered by hash (see
/// [`crate::compile::check`], which also says the errors).
pub fn check_module(store: &Store, spec: &WasmSpec, module: &[u8]) -> Result<()> {
    if blake3::hash(module).to_hex().as_str() != spec.module_blake3 {
        return Err(Error::Refused(Refusal::one(
            Rule::WasmModule,
            "the module's bytes do not hash to the template's module_blake3",
        )));
    }
    crate::compile::check(store, module)
}

/// Stores an uploaded WASM module by its BLAKE3 digest, after the host has compiled it (in a
/// child process with limits, see [`crate::compile`]) and checked its imports and exports: a
/// module that could never run is refused here, before any template names it. Storing the
/// same bytes again changes nothing.
pub fn store_module(
    store: &mut Store,
    actor: &str,
    bytes: &[u8],
) -> Result<veil_sdk::api::ModuleStored> {
    if bytes.len() > veil_sdk::template::MODULE_BYTES_MAX {
        return Err(Error::Refused(Refusal::one(
            Rule::WasmModule,
            format!(
                "the module is {} bytes; the limit is {} bytes",
                bytes.len(),
                veil_sdk::template::MODULE_BYTES_MAX
            ),
        )));
    }
    crate::compile::check(store, bytes)?;
    let digest = blake3::hash(bytes).to_hex().to_string();
    let now = clock::format(clock::now());
    store.write(|tx| {
        let added = tx.execute(
            "INSERT OR IGNORE INTO modules (blake3, bytes, stored_at) VALUES (?1, ?2, ?3)",
            params![digest, bytes, now],
        )?;
        if added == 1 {
            audit::append(
                tx,
                actor,
                &digest,
                audit::Event::ModuleStored { bytes: bytes.len() },
            )?;
        }
        Ok(())
    })?;
    Ok(veil_sdk::api::ModuleStored {
        blake3: digest,
        bytes: bytes.len() as u64,
    })
}

/// Stores a submitted template with its WASM module, if it has one, after the spec's own
/// checks and the module's. It does not run the gate's static checks: front ends call
/// [`submit_checked`], so that every door checks the same things; the demo and the tests use
/// this to file a template that the gate then refuses when a job runs it.
pub fn submit_with_module(
    store: &mut Store,
    operator: &str,
    spec: TemplateSpec,
    module: Option<Vec<u8>>,
) -> Result<Template> {
    if operator.trim().is_empty() {
        return Err(Error::invalid("name the submitting operator (--operator)"));
    }
    spec.check()?;
    match (&spec.wasm, &module) {
        (Some(wasm), Some(bytes)) => check_module(store, wasm, bytes)?,
        (Some(_), None) => {
            return Err(Error::invalid(
                "a WASM template needs its module: give --wasm FILE or `module` in the [wasm] table",
            ));
        }
        (None, Some(_)) => {
            return Err(Error::invalid(
                "a module was given for a SQL template; add a [wasm] table or drop the module",
            ));
        }
        (None, None) => {}
    }
    let canonical = spec.canonical_bytes()?;
    let id = TemplateId::of_bytes(&canonical);
    if let Some(existing) = find(store, id.as_str())? {
        if existing.operator != operator {
            return Err(Error::invalid(
                "another operator already submitted a template with exactly these bytes; change the name",
            ));
        }
        return Ok(existing);
    }
    let now = clock::format(clock::now());
    store.write(|tx| {
        tx.execute(
            "INSERT INTO templates (id, name, operator, canonical, state, submitted_at)
             VALUES (?1, ?2, ?3, ?4, 'submitted', ?5)",
            params![id.as_str(), spec.name, operator, canonical, now],
        )?;
        if let (Some(wasm), Some(bytes)) = (&spec.wasm, &module) {
            tx.execute(
                "INSERT OR IGNORE INTO modules (blake3, bytes, stored_at) VALUES (?1, ?2, ?3)",
                params![wasm.module_blake3, bytes, now],
            )?;
        }
        audit::append(
            tx,
            operator,
            id.as_str(),
            audit::Event::TemplateSubmitted { name: &spec.name },
        )?;
        Ok(())
    })?;
    get(store, id.as_str())
}

/// The noise an approval chooses, as front ends name it.
pub use veil_gate::terms::Mechanism;

/// Approves a submitted template after the gate's static checks (the same [`static_check`] a
/// submission runs, against the operator's grants as they are now): what every front end
/// calls, so the bureau cannot approve a template the gate would refuse at run time.
pub async fn approve_checked(
    store: &mut Store,
    id: &str,
    request: ApprovalRequest,
) -> Result<Template> {
    let template = get(store, id)?;
    static_check(store, &template.operator, &template.spec).await?;
    approve(store, id, request)
}

/// What approving template `id` with `request`'s terms would give, without approving it: each
/// output column's error at 95 % confidence (from the ε plan the gate would make; no row is
/// read) and warnings about the grouping. The bureau sees it when it chooses ε; `approve`
/// in the CLI prints it too.
pub async fn preview(
    store: &Store,
    id: &str,
    request: &ApprovalRequest,
) -> Result<veil_sdk::api::Preview> {
    let approval = request.check()?;
    let template = get(store, id)?;
    let today = clock::today();
    let mut candidates: Vec<analysis::Tables> = grants::list(store)?
        .into_iter()
        .filter(|g| g.operator == template.operator && g.is_in_term(today))
        .map(|g| grant_tables(store, &g))
        .collect::<Result<_>>()?;
    if candidates.is_empty() {
        candidates.push(named_tables(store, &template.spec)?);
    }
    let mut first_refusal = None;
    for tables in &candidates {
        let analysis = match check_against(store, &template.spec, tables).await? {
            Ok(analysis) => analysis,
            Err(refusal) => {
                first_refusal.get_or_insert(refusal);
                continue;
            }
        };
        let config = exec::release_config(&approval.terms(), 0, None);
        let plan = veil_gate::release::plan_noise(&analysis, &config).map_err(Error::Refused)?;
        return Ok(veil_sdk::api::Preview {
            accuracy: plan.accuracy().to_vec(),
            warnings: crate::contribution::max_groups_warnings(
                store,
                tables,
                &analysis,
                approval.max_groups,
                crate::contribution::Audience::Bureau,
            )?,
        });
    }
    Err(Error::Refused(first_refusal.unwrap_or_default()))
}

/// Approves a submitted template, pinning its privacy parameters and price, without the gate's
/// static checks (see [`approve_checked`]).
pub fn approve(store: &mut Store, id: &str, request: ApprovalRequest) -> Result<Template> {
    let approval = request.check()?;
    let template = get(store, id)?;
    if template.state != TemplateState::Submitted {
        return Err(Error::invalid(format!(
            "template {} is {}; only a submitted template can be approved",
            template.id,
            template.state.as_str()
        )));
    }
    let problems = sensitivity_problems(store, &template, &approval)?;
    if !problems.is_empty() {
        return Err(Error::invalid(format!(
            "these contribution limits would let one unit move a sum further than arithmetic can carry:\n{}",
            problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        )));
    }
    let json = serde_json::to_string(&approval)
        .map_err(|e| Error::internal(format!("encoding an approval: {e}")))?;
    decide(
        store,
        &template,
        TemplateState::Approved,
        Some(json),
        None,
        audit::Event::TemplateApproved {
            approval: &approval,
        },
    )
}

/// What one unit can add to a sum under `approval` — the sensitivity `max_groups × max_rows ×
/// max(|lo|, |hi|)` the gate calibrates noise to — for every bounded column the template may
/// sum: the columns of the datasets its SQL reads (for a WASM template, its input SQL) and a
/// WASM template's declared outputs. Each must stay within `catalog::sum_abs_max` of its type,
/// so the sensitivity is a finite, exact number and the noisy sum cannot overflow; a WASM
/// template's outputs must also sum, over every output row the input tables allow, within it.
/// Returns one line per column that does not, naming it and the fix.
fn sensitivity_problems(
    store: &Store,
    template: &Template,
    approval: &Approval,
) -> Result<Vec<String>> {
    let per_unit = f64::from(approval.max_groups) * f64::from(approval.max_rows);
    let mut problems = Vec::new();
    let mut totals = Vec::new();
    let mut check = |column: String, integer: bool, [lo, hi]: [f64; 2]| {
        let bound = lo.abs().max(hi.abs());
        let (limit, limit_name) = catalog::sum_abs_max(integer);
        let sensitivity = per_unit * bound;
        if !(sensitivity.is_finite() && sensitivity <= limit) {
            problems.push(format!(
                "column `{column}`: one unit may add up to --max-groups {} × --max-rows {} × bound {} = {}, beyond the {} a sum may reach ({limit_name}); approve with --max-groups × --max-rows at most {}, or narrow the column's bounds",
                approval.max_groups,
                approval.max_rows,
                catalog::show_number(bound),
                catalog::show_number(sensitivity),
                catalog::show_number(limit),
                catalog::show_number((limit / bound.max(f64::MIN_POSITIVE)).floor()),
            ));
        }
    };
    let datasets = named_datasets(store, &template.spec)?;
    for dataset in &datasets {
        let schema = catalog::schema_of(dataset, store)?;
        for (name, column) in &dataset.policy.columns {
            if let Some(bounds) = column.bounds {
                let integer = schema
                    .field_with_name(name)
                    .is_ok_and(|f| f.data_type().is_integer());
                check(format!("{}.{name}", dataset.name), integer, bounds);
            }
        }
    }
    if let Some(wasm) = &template.spec.wasm {
        let rows = datasets.iter().map(|d| d.rows).max().unwrap_or(0) as f64;
        for output in &wasm.output {
            let Some(bounds) = output.bounds else {
                continue;
            };
            let integer = output.kind == OutputType::Integer;
            check(format!("{MAPPED_TABLE}.{}", output.name), integer, bounds);
            let bound = bounds[0].abs().max(bounds[1].abs());
            let total = rows * f64::from(wasm.max_rows_per_unit) * bound;
            let (limit, limit_name) = catalog::sum_abs_max(integer);
            if !(total.is_finite() && total <= limit) {
                totals.push(format!(
                    "output column `{}`: {} input rows × {} output rows each × {} = {}, beyond the {} a sum may reach ({limit_name}); the operator must declare narrower bounds or a smaller max_rows_per_unit",
                    output.name,
                    rows,
                    wasm.max_rows_per_unit,
                    catalog::show_number(bound),
                    catalog::show_number(total),
                    catalog::show_number(limit),
                ));
            }
        }
    }
    problems.extend(totals);
    Ok(problems)
}

/// The tables `sql` names (lower-cased, the last part of a qualified name), or `None` when it
/// does not parse here.
fn referenced_tables(sql: &str) -> Option<Vec<String>> {
    use datafusion::sql::sqlparser::ast::visit_relations;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    let (sql, _) = bind_named_parameters(sql);
    let statements = Parser::parse_sql(&GenericDialect {}, &sql).ok()?;
    let mut names = Vec::new();
    let _ = visit_relations(&statements, |relation| {
        if let Some(ident) = relation.0.last().and_then(|part| part.as_ident()) {
            names.push(ident.value.to_lowercase());
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    names.sort();
    names.dedup();
    Some(names)
}

/// Rejects a submitted template with reasons.
pub fn reject(store: &mut Store, id: &str, reason: &str) -> Result<Template> {
    let template = get(store, id)?;
    if reason.trim().is_empty() {
        return Err(Error::invalid("give the operator a reason (--reason)"));
    }
    if template.state != TemplateState::Submitted {
        return Err(Error::invalid(format!(
            "template {} is {}; only a submitted template can be rejected",
            template.id,
            template.state.as_str()
        )));
    }
    decide(
        store,
        &template,
        TemplateState::Rejected,
        None,
        Some(reason),
        audit::Event::TemplateRejected { reason },
    )
}

/// Revokes an approved template: no job runs it any more.
pub fn revoke(store: &mut Store, id: &str, reason: &str) -> Result<Template> {
    let template = get(store, id)?;
    if reason.trim().is_empty() {
        return Err(Error::invalid("say why the template is revoked (--reason)"));
    }
    if template.state != TemplateState::Approved {
        return Err(Error::invalid(format!(
            "template {} is {}; only an approved template can be revoked",
            template.id,
            template.state.as_str()
        )));
    }
    let approval = template
        .approval
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| Error::internal(format!("encoding an approval: {e}")))?;
    decide(
        store,
        &template,
        TemplateState::Revoked,
        approval,
        Some(reason),
        audit::Event::TemplateRevoked { reason },
    )
}

fn decide(
    store: &mut Store,
    template: &Template,
    state: TemplateState,
    approval_json: Option<String>,
    reason: Option<&str>,
    event: audit::Event<'_>,
) -> Result<Template> {
    let now = clock::format(clock::now());
    store.write(|tx| {
        // The state in the WHERE clause makes the transition exact even if two officers act
        // at once: the second finds no row in the expected state.
        let changed = tx.execute(
            "UPDATE templates SET state = ?1, approval_json = ?2, reasons = ?3, decided_at = ?4
             WHERE id = ?5 AND state = ?6",
            params![
                state.as_str(),
                approval_json,
                reason,
                now,
                template.id.as_str(),
                template.state.as_str()
            ],
        )?;
        if changed != 1 {
            return Err(Error::invalid(
                "the template changed state meanwhile; look at it again",
            ));
        }
        audit::append(tx, "bureau", template.id.as_str(), event)?;
        Ok(())
    })?;
    get(store, template.id.as_str())
}

/// A stored module's bytes, checked against the digest they are filed under.
pub fn module_bytes(store: &Store, blake3_hex: &str) -> Result<Vec<u8>> {
    let bytes: Option<Vec<u8>> = store
        .conn()
        .query_row(
            "SELECT bytes FROM modules WHERE blake3 = ?1",
            [blake3_hex],
            |row| row.get(0),
        )
        .optional()?;
    match bytes {
        Some(bytes) if blake3::hash(&bytes).to_hex().as_str() == blake3_hex => Ok(bytes),
        Some(_) => Err(Error::Refused(Refusal::one(
            Rule::TemplateNotApproved,
            "the stored module no longer hashes to its digest; submit the template again",
        ))),
        None => Err(Error::Refused(Refusal::one(
            Rule::TemplateNotApproved,
            "the template's module is not in the store; submit the template again",
        ))),
    }
}

const COLUMNS: &str =
    "id, operator, canonical, state, approval_json, reasons, submitted_at, decided_at";

fn row_to_template(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Template>> {
    let id: String = row.get(0)?;
    let canonical: Vec<u8> = row.get(2)?;
    let state: String = row.get(3)?;
    let approval_json: Option<String> = row.get(4)?;
    let operator: String = row.get(1)?;
    let reasons: Option<String> = row.get(5)?;
    let submitted_at: String = row.get(6)?;
    let decided_at: Option<String> = row.get(7)?;
    Ok((|| -> Result<Template> {
        // The stored bytes must still hash to the id they are filed under; a changed byte
        // makes the template unusable rather than silently different.
        if TemplateId::of_bytes(&canonical).as_str() != id {
            return Err(Error::Refused(Refusal::one(
                Rule::TemplateNotApproved,
                format!(
                    "template {id}: its stored bytes no longer hash to its id; submit it again for approval"
                ),
            )));
        }
        let canonical: serde_json::Value = serde_json::from_slice(&canonical)
            .map_err(|e| Error::internal(format!("reading a template: {e}")))?;
        let wasm = match canonical.get("wasm") {
            Some(wasm) => Some(
                serde_json::from_value(wasm.clone())
                    .map_err(|e| Error::internal(format!("reading a template: {e}")))?,
            ),
            None => None,
        };
        let spec = TemplateSpec {
            name: canonical["name"].as_str().unwrap_or_default().to_string(),
            sql: canonical["sql"].as_str().unwrap_or_default().to_string(),
            params: serde_json::from_value(canonical["params"].clone())
                .map_err(|e| Error::internal(format!("reading a template: {e}")))?,
            wasm,
            versions: match canonical.get("versions") {
                Some(pins) => serde_json::from_value(pins.clone())
                    .map_err(|e| Error::internal(format!("reading a template: {e}")))?,
                None => Default::default(),
            },
        };
        let approval = approval_json
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|e| Error::internal(format!("reading an approval: {e}")))?;
        Ok(Template {
            id: TemplateId::new(id.clone()),
            operator,
            spec,
            state: TemplateState::parse(&state)?,
            approval,
            reasons,
            submitted_at,
            decided_at,
        })
    })())
}

/// Template `id`'s approval as stored (JSON), or `None` if the template does not exist or
/// has not been approved. Takes a connection so the ledger can read it inside the job's final
/// transaction.
pub fn stored_approval(conn: &rusqlite::Connection, id: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT approval_json FROM templates WHERE id = ?1",
            [id],
            |row| row.get(0),
        )
        .optional()?
        .flatten())
}

/// Fewest leading characters of a template id that may stand for it: shorter prefixes would
/// too often name several templates.
pub const ID_PREFIX_CHARS_MIN: usize = 8;

/// Finds a template by id (full hash, or a unique prefix of at least
/// [`ID_PREFIX_CHARS_MIN`] characters) or by name.
pub fn find(store: &Store, key: &str) -> Result<Option<Template>> {
    let mut found = query_parsed_rows(
        store.conn(),
        &format!(
            "SELECT {COLUMNS} FROM templates
         WHERE id = ?1 OR (length(?1) >= {ID_PREFIX_CHARS_MIN} AND id LIKE ?1 || '%') OR name = ?1
         ORDER BY submitted_at DESC"
        ),
        [key],
        row_to_template,
    )?;
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => {
            // Several templates share the name: prefer the one exact id, else the approved one.
            if let Some(exact) = found.iter().position(|t| t.id.as_str() == key) {
                return Ok(Some(found.swap_remove(exact)));
            }
            let approved: Vec<usize> = found
                .iter()
                .enumerate()
                .filter(|(_, t)| t.state == TemplateState::Approved)
                .map(|(i, _)| i)
                .collect();
            if let [one] = approved.as_slice() {
                return Ok(Some(found.swap_remove(*one)));
            }
            Err(Error::invalid(format!(
                "`{key}` names {} templates; use the full template id",
                found.len()
            )))
        }
    }
}

pub fn get(store: &Store, key: &str) -> Result<Template> {
    // A short run of hex digits was most likely meant as an id prefix: say how long one must be.
    let short_prefix =
        key.len() < ID_PREFIX_CHARS_MIN && key.chars().all(|c| c.is_ascii_hexdigit());
    find(store, key)?.ok_or_else(|| Error::NotFound {
        kind: "template",
        id: key.to_string(),
        hint: if short_prefix {
            SHORT_PREFIX_HINT
        } else {
            "; `veil template list` shows the templates"
        },
    })
}

/// The hint for a key too short to be an id prefix; its number is [`ID_PREFIX_CHARS_MIN`]
/// (a test checks that they agree).
const SHORT_PREFIX_HINT: &str = "; an id prefix needs at least 8 characters (or give the template's name); `veil template list` shows the templates";

pub fn list(store: &Store) -> Result<Vec<Template>> {
    query_parsed_rows(
        store.conn(),
        &format!("SELECT {COLUMNS} FROM templates ORDER BY submitted_at, id"),
        [],
        row_to_template,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_prefix_hint_states_the_minimum() {
        assert!(SHORT_PREFIX_HINT.contains(&format!("at least {ID_PREFIX_CHARS_MIN} characters")));
    }

    fn spec(sql: &str) -> TemplateSpec {
        TemplateSpec {
            name: "t".into(),
            sql: sql.into(),
            params: vec![ParamSpec {
                name: "city".into(),
                kind: ParamType::Text,
                allowed: Some(vec!["Taiyuan".into(), "Datong".into()]),
            }],
            wasm: None,
            versions: Default::default(),
        }
    }

    #[test]
    fn one_byte_changes_the_id() -> Result<()> {
        let a = spec("SELECT COUNT(*) FROM t WHERE city = :city").id()?;
        let b = spec("SELECT COUNT(*) FROM t WHERE city = :city ").id()?;
        assert_ne!(a, b);
        assert_eq!(a, spec("SELECT COUNT(*) FROM t WHERE city = :city").id()?);
        Ok(())
    }

    #[test]
    fn placeholders_must_match_declarations() {
        let bad = spec("SELECT COUNT(*) FROM t WHERE city = :town");
        let refusal = bad.check().err().unwrap_or_default();
        assert_eq!(
            refusal.codes(),
            vec!["statement.parameters", "statement.parameters"]
        );
    }

    #[test]
    fn binding_checks_allowed_values_and_types() {
        let template = spec("SELECT COUNT(*) FROM t WHERE city = :city");
        assert!(template.bind(&[("city".into(), "Taiyuan".into())]).is_ok());
        let refused = template.bind(&[("city".into(), "Beijing".into())]);
        assert!(refused.is_err_and(|r| {
            r.violations[0]
                .message
                .contains("not one of the approved values")
        }));
        assert!(template.bind(&[]).is_err());
        assert!(
            template
                .bind(&[("city".into(), "Taiyuan".into()), ("x".into(), "1".into())])
                .is_err()
        );
    }
}
