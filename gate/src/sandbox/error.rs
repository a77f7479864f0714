//! Sandbox errors, sorted by whose fault they are, with messages that never carry a value
//! read from inside the domain.

use datafusion::error::DataFusionError;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::parser::ParserError;

/// Why the sandbox refused or could not finish a query.
///
/// The operator's fault: [`Parse`](Self::Parse), [`TooLong`](Self::TooLong),
/// [`MultipleStatements`](Self::MultipleStatements), [`Forbidden`](Self::Forbidden),
/// [`UnknownTable`](Self::UnknownTable), [`UnknownColumn`](Self::UnknownColumn),
/// [`Planning`](Self::Planning), [`UnboundParameter`](Self::UnboundParameter),
/// [`QueryFailed`](Self::QueryFailed). Resources: [`ResourcesExhausted`](Self::ResourcesExhausted),
/// [`TimedOut`](Self::TimedOut). The bureau's or the platform's: [`TableUnreadable`](Self::TableUnreadable),
/// [`Config`](Self::Config), [`Internal`](Self::Internal).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SandboxError {
    #[error("the SQL does not parse: {0}")]
    Parse(String),
    #[error("the SQL text is {bytes} bytes long; the limit is {max} bytes")]
    TooLong { bytes: usize, max: usize },
    #[error("the SQL text holds {count} statements; submit exactly one query")]
    MultipleStatements { count: usize },
    #[error("{0} is not allowed: a job is a single read-only SELECT query")]
    Forbidden(ForbiddenStatement),
    #[error("table `{table}` is not in this job's grant; the tables you may query are: {allowed}")]
    UnknownTable { table: String, allowed: String },
    #[error("column `{column}` does not exist in the tables of this query")]
    UnknownColumn { column: String },
    #[error("the query cannot be planned: {0}")]
    Planning(String),
    #[error("a template parameter has no value; give every `:name` in the SQL a value")]
    UnboundParameter,
    #[error(
        "the query failed while reading in-domain rows ({0}); make every expression valid for \
         every row (for example TRY_CAST instead of CAST, NULLIF around divisors)"
    )]
    QueryFailed(&'static str),
    #[error(
        "the query needed more memory than the job's limit; group by fewer or coarser columns, \
         or ask the bureau for a higher memory limit on the template"
    )]
    ResourcesExhausted,
    #[error("the query ran longer than the job's limit of {limit_ms} ms")]
    TimedOut { limit_ms: u64 },
    #[error("the data of table `{table}` cannot be read; the bureau must re-register it")]
    TableUnreadable { table: String },
    #[error("sandbox configuration: {0}")]
    Config(String),
    #[error("internal sandbox error: {0}")]
    Internal(String),
}

impl SandboxError {
    pub(crate) fn internal(error: impl std::fmt::Display) -> Self {
        // Only used on paths that never touch row values (building the session, registering
        // tables), so the text is safe to keep for the platform's own diagnosis.
        Self::Internal(error.to_string())
    }
}

/// A statement kind the sandbox refuses, named as an operator would recognise it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForbiddenStatement {
    Explain,
    Copy,
    CreateExternalTable,
    Set,
    /// `CREATE`, `DROP`, `ALTER`, … of any object.
    Ddl(&'static str),
    /// `INSERT`, `UPDATE`, `DELETE`, `MERGE`, `TRUNCATE`.
    Dml(&'static str),
    Other(&'static str),
}

impl std::fmt::Display for ForbiddenStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Explain => f.write_str("EXPLAIN (of any kind)"),
            Self::Copy => f.write_str("COPY"),
            Self::CreateExternalTable => f.write_str("CREATE EXTERNAL TABLE"),
            Self::Set => f.write_str("SET"),
            Self::Ddl(kind) => write!(f, "{kind} (DDL)"),
            Self::Dml(kind) => write!(f, "{kind} (DML)"),
            Self::Other(kind) => write!(f, "{kind}"),
        }
    }
}

impl ForbiddenStatement {
    pub(crate) fn of_datafusion(statement: &DFStatement) -> Self {
        match statement {
            DFStatement::Statement(inner) => Self::of_sql(inner),
            DFStatement::CreateExternalTable(_) => Self::CreateExternalTable,
            DFStatement::CopyTo(_) => Self::Copy,
            DFStatement::Explain(_) => Self::Explain,
            DFStatement::Reset(_) => Self::Set,
        }
    }

    pub(crate) fn of_sql(statement: &SqlStatement) -> Self {
        use SqlStatement as S;
        match statement {
            S::Explain { .. } | S::ExplainTable { .. } => Self::Explain,
            S::Copy { .. } | S::CopyIntoSnowflake { .. } | S::Unload { .. } => Self::Copy,
            S::Set(_) => Self::Set,
            S::Insert(_) => Self::Dml("INSERT"),
            S::Update { .. } => Self::Dml("UPDATE"),
            S::Delete(_) => Self::Dml("DELETE"),
            S::Merge { .. } => Self::Dml("MERGE"),
            S::Truncate { .. } => Self::Dml("TRUNCATE"),
            S::CreateTable(_) => Self::Ddl("CREATE TABLE"),
            S::CreateView { .. } => Self::Ddl("CREATE VIEW"),
            S::CreateSchema { .. } => Self::Ddl("CREATE SCHEMA"),
            S::CreateDatabase { .. } => Self::Ddl("CREATE DATABASE"),
            S::CreateFunction(_) => Self::Ddl("CREATE FUNCTION"),
            S::CreateIndex(_) => Self::Ddl("CREATE INDEX"),
            S::Drop { .. } => Self::Ddl("DROP"),
            S::AlterTable { .. } => Self::Ddl("ALTER TABLE"),
            S::Prepare { .. } | S::Execute { .. } | S::Deallocate { .. } => {
                Self::Other("PREPARE/EXECUTE")
            }
            S::ShowTables { .. }
            | S::ShowColumns { .. }
            | S::ShowVariable { .. }
            | S::ShowFunctions { .. } => Self::Other("SHOW"),
            S::StartTransaction { .. } | S::Commit { .. } | S::Rollback { .. } => {
                Self::Other("a transaction statement")
            }
            _ => Self::Other("this statement kind"),
        }
    }
}

/// Parser errors quote only the operator's own text, never data, so their message is kept,
/// without DataFusion's prefixes.
pub(crate) fn describe_parse_error(error: &DataFusionError) -> String {
    match error.find_root() {
        DataFusionError::SQL(inner, _) => match inner.as_ref() {
            ParserError::ParserError(message) | ParserError::TokenizerError(message) => {
                message.clone()
            }
            ParserError::RecursionLimitExceeded => {
                "the query is nested too deeply; flatten subqueries or expressions".into()
            }
        },
        _ => "the SQL text is not valid".into(),
    }
}

/// Planning reads only schemas and the operator's own text, so a planning message can name
/// columns and tables; it is still mapped to a short category where one fits.
pub(crate) fn map_plan_error(error: &DataFusionError, allowed: &[String]) -> SandboxError {
    let root = error.find_root();
    if let DataFusionError::SchemaError(schema_error, _) = root
        && let datafusion::common::SchemaError::FieldNotFound { field, .. } = schema_error.as_ref()
    {
        return SandboxError::UnknownColumn {
            column: field.name().to_string(),
        };
    }
    if let DataFusionError::Plan(message) = root
        && let Some(table) = message
            .strip_prefix("table '")
            .and_then(|rest| rest.split('\'').next())
    {
        let short = table.rsplit('.').next().unwrap_or(table).to_string();
        return SandboxError::UnknownTable {
            table: short,
            allowed: if allowed.is_empty() {
                "(none)".into()
            } else {
                allowed.join(", ")
            },
        };
    }
    match root {
        DataFusionError::Plan(message) | DataFusionError::NotImplemented(message) => {
            SandboxError::Planning(first_line(message))
        }
        DataFusionError::SchemaError(schema_error, _) => {
            SandboxError::Planning(first_line(&schema_error.to_string()))
        }
        _ => SandboxError::Planning("the query uses a construct the sandbox cannot plan".into()),
    }
}

/// Execution errors may quote a value from a row (a failed cast, say), so none of their text
/// is kept: each is mapped to a fixed category.
pub(crate) fn map_exec_error(error: &DataFusionError) -> SandboxError {
    match error.find_root() {
        DataFusionError::ResourcesExhausted(_) => SandboxError::ResourcesExhausted,
        DataFusionError::ArrowError(arrow, _) => SandboxError::QueryFailed(match arrow.as_ref() {
            datafusion::arrow::error::ArrowError::CastError(_) => "a cast failed",
            datafusion::arrow::error::ArrowError::DivideByZero => "a division by zero",
            datafusion::arrow::error::ArrowError::ArithmeticOverflow(_) => "an arithmetic overflow",
            _ => "an expression failed",
        }),
        DataFusionError::Execution(_) => SandboxError::QueryFailed("an expression failed"),
        DataFusionError::Plan(_) | DataFusionError::NotImplemented(_) => {
            SandboxError::Planning("the query cannot be executed as written".into())
        }
        _ => SandboxError::QueryFailed("an execution error"),
    }
}

fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or("").trim();
    let mut short: String = line.chars().take(300).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    short
}
