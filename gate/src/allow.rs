//! The expression allow-list: every expression the gate lets run is **total** and **bounded**.
//!
//! After ε is reserved, whether a job releases and every message it shows may depend on the
//! data only through differentially private quantities. An expression that fails on one
//! person's value (a division by zero, a cast of a malformed string, an overflowing `abs`) or
//! that grows without bound on it (`repeat(district, 100000000 + year)`) turns that person's
//! value into an error or a crash — an exact oracle, whatever ε says. So the gate accepts only
//! expressions built from the operators and functions listed here, each of which
//!
//! - cannot fail on any input value (inputs of the listed types, arguments within the listed
//!   ranges), and
//! - produces at most a bounded multiple of its inputs' size ([`EXPRESSION_SCALE_MAX`]).
//!
//! The check runs on **every expression of every plan node below the released aggregate** —
//! filters, projections (derived tables), join conditions, sort keys — and on the aggregate's
//! group keys and arguments: everything the gate's own plan will evaluate. It runs on the plan
//! *after* DataFusion's type coercion (see `Sandbox::plan_query`), so the casts coercion adds
//! are checked too. Nothing else is evaluated: the operator's SQL above the aggregate never runs.
//!
//! Two operators are total only after a rewrite, which [`harden_plan`] and [`harden_expr`]
//! apply to every plan the gate executes: integer `/` and `%` become `veil_div`/`veil_mod`
//! (NULL instead of an error on a zero divisor or an overflow, see `crate::sandbox::functions`),
//! and every `CAST` becomes a `TRY_CAST` (NULL instead of an error on a value that does not
//! convert).
//!
//! Subqueries are refused wherever they appear in an expression (a scalar subquery in a group
//! key would compute a value from *other* rows — the whole table — and put it in a product):
//! the only subquery the gate knows is a derived table in `FROM`, which passes the same rules.
//!
//! The table [`FUNCTIONS`] and [`OPERATORS`] is the whole language; README.md, "The expression
//! allow-list", prints it for operators.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{Cast, ScalarFunction, TryCast};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};

use crate::rules::{Refusal, Rule};

/// Largest multiple of its widest input value an expression may output (`concat` of two
/// columns is 2, `upper` of one is 3 because a character's upper case may take up to three
/// times its bytes). It bounds the memory one row's expressions can take, whatever the values.
pub const EXPRESSION_SCALE_MAX: u32 = 8;

/// Longest `LIKE` pattern, in characters: a pattern compiles to a matcher whose size grows with
/// its length, and a matcher too large to build would be an error on the first row it meets.
pub const LIKE_PATTERN_CHARS_MAX: usize = 128;

/// Most values an `IN (…)` list may hold.
pub const IN_LIST_ITEMS_MAX: usize = 1_000;

/// Largest `|n|` for the literal integer arguments of `substr`, `left` and `right`.
pub const STRING_POSITION_MAX: i64 = 1 << 31;

/// Largest `|digits|` for `round(x, digits)`.
pub const ROUND_DIGITS_MAX: i64 = 15;
/// Longest text literal an expression may hold, in bytes.
pub const TEXT_LITERAL_BYTES_MAX: usize = 1_024;

/// Date parts `date_part`/`extract` and `date_trunc` accept.
const DATE_PARTS: [&str; 10] = [
    "year", "quarter", "month", "week", "day", "hour", "minute", "second", "dow", "doy",
];

/// One allowed operator, for the README's table.
pub struct AllowedOperator {
    pub sql: &'static str,
    pub note: &'static str,
}

/// The allowed operators.
pub const OPERATORS: &[AllowedOperator] = &[
    AllowedOperator {
        sql: "= <> < <= > >= IS [NOT] DISTINCT FROM, BETWEEN, IN (list)",
        note: "on numbers, text, booleans and dates; an IN list holds at most 1,000 values",
    },
    AllowedOperator {
        sql: "AND OR NOT, IS [NOT] NULL / TRUE / FALSE / UNKNOWN",
        note: "",
    },
    AllowedOperator {
        sql: "+ - * and unary -",
        note: "on integers (wrapping on overflow, never an error) and floats",
    },
    AllowedOperator {
        sql: "/ %",
        note: "on integers and floats of one type; run as veil_div/veil_mod: NULL on a zero divisor or an overflow",
    },
    AllowedOperator {
        sql: "||",
        note: "text concatenation",
    },
    AllowedOperator {
        sql: "[NOT] LIKE / ILIKE 'pattern'",
        note: "the pattern is a literal (or a parameter) of at most 128 characters, without ESCAPE",
    },
    AllowedOperator {
        sql: "CASE WHEN … THEN … ELSE … END",
        note: "",
    },
    AllowedOperator {
        sql: "CAST / TRY_CAST",
        note: "between integers, floats, text, booleans, dates and timestamps; always run as TRY_CAST (NULL when a value does not convert)",
    },
];

/// A call of an allowed function, as the check sees it.
struct Call<'a> {
    args: &'a [Expr],
    types: &'a [DataType],
    scales: &'a [u32],
}

impl Call<'_> {
    fn literal(&self, i: usize) -> Option<&ScalarValue> {
        self.args.get(i).and_then(literal_of)
    }

    fn literal_int(&self, i: usize) -> Option<i64> {
        match self.literal(i)? {
            ScalarValue::Int8(Some(v)) => Some(i64::from(*v)),
            ScalarValue::Int16(Some(v)) => Some(i64::from(*v)),
            ScalarValue::Int32(Some(v)) => Some(i64::from(*v)),
            ScalarValue::Int64(Some(v)) => Some(*v),
            ScalarValue::UInt8(Some(v)) => Some(i64::from(*v)),
            ScalarValue::UInt16(Some(v)) => Some(i64::from(*v)),
            ScalarValue::UInt32(Some(v)) => Some(i64::from(*v)),
            ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok(),
            _ => None,
        }
    }

    fn literal_text(&self, i: usize) -> Option<&str> {
        match self.literal(i)? {
            ScalarValue::Utf8(Some(v))
            | ScalarValue::LargeUtf8(Some(v))
            | ScalarValue::Utf8View(Some(v)) => Some(v.as_str()),
            _ => None,
        }
    }

    fn max_scale(&self) -> u32 {
        self.scales.iter().copied().max().unwrap_or(0)
    }

    fn sum_scale(&self) -> u32 {
        self.scales.iter().fold(0u32, |a, b| a.saturating_add(*b))
    }

    fn all(&self, test: fn(&DataType) -> bool) -> bool {
        self.types.iter().all(test)
    }
}

/// What an allowed function's arguments must be; `Ok(scale)` of its output or why not.
type CheckCall = fn(&Call<'_>) -> Result<u32, String>;

/// One allowed function.
pub struct AllowedFunction {
    /// DataFusion's name for it (its aliases resolve to it while planning).
    pub name: &'static str,
    /// How an operator writes it, and its conditions, for the README.
    pub sql: &'static str,
    check: CheckCall,
}

/// The allowed functions. Anything else is refused with [`Rule::StatementExpression`].
pub const FUNCTIONS: &[AllowedFunction] = &[
    AllowedFunction {
        name: "coalesce",
        sql: "coalesce(a, b, …)",
        check: |c| Ok(c.max_scale()),
    },
    AllowedFunction {
        name: "nullif",
        sql: "nullif(a, b)",
        check: |c| Ok(c.max_scale()),
    },
    AllowedFunction {
        name: "lower",
        sql: "lower(text)",
        check: |c| text_args(c).map(|()| c.max_scale().saturating_mul(3)),
    },
    AllowedFunction {
        name: "upper",
        sql: "upper(text)",
        check: |c| text_args(c).map(|()| c.max_scale().saturating_mul(3)),
    },
    AllowedFunction {
        name: "btrim",
        sql: "trim(text), btrim(text [, 'chars'])",
        check: trim,
    },
    AllowedFunction {
        name: "ltrim",
        sql: "ltrim(text [, 'chars'])",
        check: trim,
    },
    AllowedFunction {
        name: "rtrim",
        sql: "rtrim(text [, 'chars'])",
        check: trim,
    },
    AllowedFunction {
        name: "character_length",
        sql: "length(text), char_length(text), character_length(text)",
        check: |c| text_args(c).map(|()| 0),
    },
    AllowedFunction {
        name: "octet_length",
        sql: "octet_length(text)",
        check: |c| text_args(c).map(|()| 0),
    },
    AllowedFunction {
        name: "concat",
        sql: "concat(a, b, …)",
        check: |c| Ok(c.sum_scale().max(1)),
    },
    AllowedFunction {
        name: "concat_ws",
        sql: "concat_ws('separator', a, b, …)",
        check: |c| {
            c.literal_text(0)
                .map(|_| c.sum_scale().max(1))
                .ok_or_else(|| "its separator must be a literal text".to_string())
        },
    },
    AllowedFunction {
        name: "substr",
        sql: "substr(text, start [, count]), substring(…): start and count literal integers, count ≥ 0",
        check: |c| {
            let start = c.literal_int(1);
            let count = if c.args.len() > 2 {
                c.literal_int(2)
            } else {
                Some(0)
            };
            match (start, count) {
                (Some(s), Some(n))
                    if s.abs() <= STRING_POSITION_MAX && (0..=STRING_POSITION_MAX).contains(&n) =>
                {
                    Ok(c.scales[0])
                }
                _ => Err(format!(
                    "its start must be a literal integer within ±{STRING_POSITION_MAX} and its count a literal integer from 0 to {STRING_POSITION_MAX}"
                )),
            }
        },
    },
    AllowedFunction {
        name: "left",
        sql: "left(text, n): n a literal integer",
        check: left_right,
    },
    AllowedFunction {
        name: "right",
        sql: "right(text, n): n a literal integer",
        check: left_right,
    },
    AllowedFunction {
        name: "starts_with",
        sql: "starts_with(text, prefix)",
        check: |c| text_args(c).map(|()| 0),
    },
    AllowedFunction {
        name: "ends_with",
        sql: "ends_with(text, suffix)",
        check: |c| text_args(c).map(|()| 0),
    },
    AllowedFunction {
        name: "strpos",
        sql: "strpos(text, sub), position(sub IN text)",
        check: |c| text_args(c).map(|()| 0),
    },
    AllowedFunction {
        name: "replace",
        sql: "replace(text, 'from', 'to'): literal, non-empty `from`; `to` at most 4 × as long",
        check: |c| {
            match (c.literal_text(1), c.literal_text(2)) {
            (Some(from), Some(to)) if !from.is_empty() && to.len() <= 4 * from.len() => {
                Ok(c.scales[0].saturating_mul(4))
            }
            _ => Err("its `from` must be a non-empty literal text and its `to` a literal at most four times as long".into()),
        }
        },
    },
    AllowedFunction {
        name: "abs",
        sql: "abs(x) on floats",
        check: float_only,
    },
    AllowedFunction {
        name: "floor",
        sql: "floor(x) on floats",
        check: float_only,
    },
    AllowedFunction {
        name: "ceil",
        sql: "ceil(x) on floats",
        check: float_only,
    },
    AllowedFunction {
        name: "trunc",
        sql: "trunc(x) on floats",
        check: float_only,
    },
    AllowedFunction {
        name: "round",
        sql: "round(x [, digits]) on floats, digits a literal integer within ±15",
        check: |c| {
            if !c.types.first().is_some_and(is_float) {
                return Err("it is allowed on floats only; cast the value to DOUBLE".into());
            }
            match c.args.len() {
                1 => Ok(0),
                _ => match c.literal_int(1) {
                    Some(d) if d.abs() <= ROUND_DIGITS_MAX => Ok(0),
                    _ => Err(format!(
                        "its digits must be a literal integer within ±{ROUND_DIGITS_MAX}"
                    )),
                },
            }
        },
    },
    AllowedFunction {
        name: "date_part",
        sql: "date_part('part', date), extract(part FROM date): year, quarter, month, week, day, hour, minute, second, dow, doy",
        check: date_part,
    },
    AllowedFunction {
        name: "date_trunc",
        sql: "date_trunc('part', timestamp): the parts of date_part",
        check: date_part,
    },
    AllowedFunction {
        name: crate::sandbox::functions::DIV,
        sql: "veil_div(a, b): a / b, NULL on a zero divisor (what `/` runs as)",
        check: same_numbers,
    },
    AllowedFunction {
        name: crate::sandbox::functions::MOD,
        sql: "veil_mod(a, b): a % b, NULL on a zero divisor (what `%` runs as)",
        check: same_numbers,
    },
];

/// The allow-list as the README shows it (between its `allow-list` markers; a test keeps the
/// two equal): one table of operators, one of functions.
pub fn readme_section() -> String {
    let cell = |text: &str| text.replace('|', "\\|");
    let mut out = String::from("| Operator | Conditions |\n|---|---|\n");
    for op in OPERATORS {
        out.push_str(&format!("| `{}` | {} |\n", cell(op.sql), cell(op.note)));
    }
    out.push_str("\n| Function | Conditions |\n|---|---|\n");
    for f in FUNCTIONS {
        let (call, conditions) = match f.sql.split_once(": ") {
            Some(split) => split,
            None => match f.sql.find(") ") {
                Some(end) => (&f.sql[..=end], &f.sql[end + 2..]),
                None => (f.sql, ""),
            },
        };
        out.push_str(&format!("| `{}` | {} |\n", cell(call), cell(conditions)));
    }
    out
}

fn text_args(c: &Call<'_>) -> Result<(), String> {
    if c.all(|t| is_text(t) || t.is_null()) {
        Ok(())
    } else {
        Err("its arguments must be text; cast them with CAST(… AS VARCHAR)".into())
    }
}

fn trim(c: &Call<'_>) -> Result<u32, String> {
    text_args(c)?;
    if c.args.len() > 1 && c.literal_text(1).is_none() {
        return Err("the characters to trim must be a literal text".into());
    }
    Ok(c.scales.first().copied().unwrap_or(0))
}

fn left_right(c: &Call<'_>) -> Result<u32, String> {
    match c.literal_int(1) {
        Some(n) if n.abs() <= STRING_POSITION_MAX => Ok(c.scales[0]),
        _ => Err(format!(
            "its length must be a literal integer within ±{STRING_POSITION_MAX}"
        )),
    }
}

fn float_only(c: &Call<'_>) -> Result<u32, String> {
    if c.all(is_float) {
        Ok(0)
    } else {
        Err(
            "it is allowed on floats only (on integers it can overflow); cast the value to DOUBLE"
                .into(),
        )
    }
}

fn date_part(c: &Call<'_>) -> Result<u32, String> {
    let part = c.literal_text(0).map(str::to_ascii_lowercase);
    if !part.as_deref().is_some_and(|p| DATE_PARTS.contains(&p)) {
        return Err(format!(
            "its part must be one of the literals {}",
            DATE_PARTS.join(", ")
        ));
    }
    if !c.types.get(1).is_some_and(is_temporal) {
        return Err("its second argument must be a date or a timestamp".into());
    }
    Ok(0)
}

fn same_numbers(c: &Call<'_>) -> Result<u32, String> {
    match c.types {
        [a, b] if a == b && crate::sandbox::functions::supports(a) => Ok(0),
        _ => Err("it takes two numbers of the same type".into()),
    }
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float32 | DataType::Float64)
}

fn is_number(t: &DataType) -> bool {
    t.is_integer() || is_float(t)
}

fn is_temporal(t: &DataType) -> bool {
    matches!(t, DataType::Date32 | DataType::Timestamp(..))
}

/// Types the allowed expressions compute on. A column of another type (a decimal, a list) may
/// still be passed through unchanged; it may not be computed on.
pub fn computable(t: &DataType) -> bool {
    is_number(t) || is_text(t) || is_temporal(t) || matches!(t, DataType::Boolean | DataType::Null)
}

/// Where an expression sits, for messages.
#[derive(Debug, Clone, Copy)]
pub enum Clause {
    Where,
    Select,
    JoinOn,
    OrderBy,
    GroupBy,
    Aggregate,
}

impl Clause {
    fn name(self) -> &'static str {
        match self {
            Self::Where => "WHERE",
            Self::Select => "SELECT",
            Self::JoinOn => "JOIN … ON",
            Self::OrderBy => "ORDER BY",
            Self::GroupBy => "GROUP BY",
            Self::Aggregate => "an aggregate's argument",
        }
    }
}

/// Checks one expression evaluated over `schema` (whose columns have the given scales) and
/// returns its scale; every broken rule is pushed to `refusal`.
pub fn check(
    expr: &Expr,
    schema: &DFSchema,
    column_scales: &[u32],
    clause: Clause,
    refusal: &mut Refusal,
) -> u32 {
    let mut checker = Checker {
        schema,
        column_scales,
        clause,
        refusal,
        too_wide: false,
    };
    checker.walk(expr)
}

struct Checker<'a> {
    schema: &'a DFSchema,
    column_scales: &'a [u32],
    clause: Clause,
    refusal: &'a mut Refusal,
    /// Whether an over-wide value was refused already (said once per expression).
    too_wide: bool,
}

impl Checker<'_> {
    fn refuse(&mut self, message: String) {
        self.refusal.push(Rule::StatementExpression, message);
    }

    fn type_of(&mut self, expr: &Expr) -> Option<DataType> {
        match expr.get_type(self.schema) {
            Ok(t) => Some(t),
            Err(_) => {
                self.refuse(format!(
                    "an expression in {} has no type the gate can determine",
                    self.clause.name()
                ));
                None
            }
        }
    }

    /// Refuses computing on a value of a type outside [`computable`].
    fn require_computable(&mut self, expr: &Expr, what: &str) -> Option<DataType> {
        let t = self.type_of(expr)?;
        if computable(&t) {
            Some(t)
        } else {
            self.refuse(format!(
                "{what} in {} computes on a value of type {t}; only integers, floats, text, booleans, dates and timestamps can be computed on (cast with TRY_CAST)",
                self.clause.name()
            ));
            None
        }
    }

    /// The scale of `expr`'s value. Every value computed on the way counts, not only the
    /// result: `length(…)` or a comparison over a value grown a thousandfold returns a small
    /// value after a large computation, which could exhaust time or memory on one person's row.
    fn walk(&mut self, expr: &Expr) -> u32 {
        let scale = self.walk_node(expr);
        if scale > EXPRESSION_SCALE_MAX {
            if !self.too_wide {
                self.too_wide = true;
                self.refuse(format!(
                    "an expression in {} can compute a value up to {scale} times its widest input value; the limit is {EXPRESSION_SCALE_MAX} (fewer concatenations, upper/lower or replace)",
                    self.clause.name()
                ));
            }
            // Keep counting from the limit, so one refusal does not multiply into overflow.
            return EXPRESSION_SCALE_MAX;
        }
        scale
    }

    fn walk_node(&mut self, expr: &Expr) -> u32 {
        match expr {
            Expr::Alias(alias) => self.walk(&alias.expr),
            Expr::Column(column) => self
                .schema
                .index_of_column(column)
                .ok()
                .and_then(|i| self.column_scales.get(i).copied())
                .unwrap_or(1),
            Expr::Literal(value, _) => {
                let t = value.data_type();
                if !computable(&t) {
                    self.refuse(format!(
                        "a literal of type {t} in {} is not allowed; use numbers, text, booleans or dates",
                        self.clause.name()
                    ));
                }
                if let ScalarValue::Utf8(Some(text))
                | ScalarValue::LargeUtf8(Some(text))
                | ScalarValue::Utf8View(Some(text)) = value
                    && text.len() > TEXT_LITERAL_BYTES_MAX
                {
                    self.refuse(format!(
                        "a text literal in {} is {} bytes long; the limit is {TEXT_LITERAL_BYTES_MAX} (a long literal concatenated to every row multiplies the memory a query needs)",
                        self.clause.name(),
                        text.len()
                    ));
                }
                0
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => self.binary(left, *op, right),
            Expr::Like(like) => {
                self.walk(&like.expr);
                self.require_computable(&like.expr, "LIKE");
                let pattern_ok = match literal_of(&like.pattern) {
                    Some(
                        ScalarValue::Utf8(Some(p))
                        | ScalarValue::LargeUtf8(Some(p))
                        | ScalarValue::Utf8View(Some(p)),
                    ) => p.chars().count() <= LIKE_PATTERN_CHARS_MAX,
                    _ => false,
                };
                if !pattern_ok || like.escape_char.is_some() {
                    self.refuse(format!(
                        "a LIKE pattern must be a literal text (or a parameter) of at most {LIKE_PATTERN_CHARS_MAX} characters, without ESCAPE"
                    ));
                }
                0
            }
            Expr::Not(inner)
            | Expr::IsNull(inner)
            | Expr::IsNotNull(inner)
            | Expr::IsTrue(inner)
            | Expr::IsFalse(inner)
            | Expr::IsUnknown(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsNotFalse(inner)
            | Expr::IsNotUnknown(inner) => {
                self.walk(inner);
                0
            }
            Expr::Negative(inner) => {
                self.walk(inner);
                if let Some(t) = self.type_of(inner)
                    && !is_number(&t)
                {
                    self.refuse(format!(
                        "unary minus in {} applies to numbers only, not {t}",
                        self.clause.name()
                    ));
                }
                0
            }
            Expr::Between(between) => {
                for e in [&between.expr, &between.low, &between.high] {
                    self.walk(e);
                    self.require_computable(e, "BETWEEN");
                }
                0
            }
            Expr::Case(case) => {
                let mut scale = 0;
                if let Some(base) = &case.expr {
                    self.walk(base);
                }
                for (when, then) in &case.when_then_expr {
                    self.walk(when);
                    scale = scale.max(self.walk(then));
                }
                if let Some(otherwise) = &case.else_expr {
                    scale = scale.max(self.walk(otherwise));
                }
                scale
            }
            Expr::Cast(Cast { expr: inner, field })
            | Expr::TryCast(TryCast { expr: inner, field }) => {
                let data_type = field.data_type();
                let scale = self.walk(inner);
                let from = self.type_of(inner);
                if let Some(from) = from
                    && !(computable(&from) && computable(data_type))
                {
                    self.refuse(format!(
                        "a cast from {from} to {data_type} in {} is not allowed; casts run between integers, floats, text, booleans, dates and timestamps",
                        self.clause.name()
                    ));
                }
                // A number or date printed as text has a bounded width of its own.
                if is_text(data_type) && !self.type_of(inner).as_ref().is_some_and(is_text) {
                    0
                } else {
                    scale
                }
            }
            Expr::ScalarFunction(call) => self.function(call),
            Expr::InList(list) => {
                self.walk(&list.expr);
                self.require_computable(&list.expr, "IN");
                if list.list.len() > IN_LIST_ITEMS_MAX {
                    self.refuse(format!(
                        "an IN list in {} holds {} values; the limit is {IN_LIST_ITEMS_MAX}",
                        self.clause.name(),
                        list.list.len()
                    ));
                }
                for item in &list.list {
                    self.walk(item);
                }
                0
            }
            Expr::ScalarSubquery(_)
            | Expr::InSubquery(_)
            | Expr::Exists(_)
            | Expr::SetComparison(_)
            | Expr::OuterReferenceColumn(..) => {
                self.refusal.push(
                    Rule::StatementSubquery,
                    format!(
                        "{} uses a subquery; a value computed from other rows must not reach a product — the only subquery allowed is a derived table in FROM",
                        self.clause.name()
                    ),
                );
                0
            }
            Expr::AggregateFunction(_) | Expr::WindowFunction(_) => {
                self.refuse(format!(
                    "{} uses an aggregate or window function; aggregate once, at the top of the query",
                    self.clause.name()
                ));
                0
            }
            Expr::Placeholder(_) | Expr::ScalarVariable(..) => {
                self.refusal.push(
                    Rule::StatementParameters,
                    format!(
                        "{} uses an unbound placeholder or a variable; use the template's declared parameters",
                        self.clause.name()
                    ),
                );
                0
            }
            other => {
                self.refuse(format!(
                    "`{}` in {} is not on the expression allow-list (see the README, \"The expression allow-list\")",
                    variant_name(other),
                    self.clause.name()
                ));
                0
            }
        }
    }

    fn binary(&mut self, left: &Expr, op: Operator, right: &Expr) -> u32 {
        let (ls, rs) = (self.walk(left), self.walk(right));
        let types = (self.type_of(left), self.type_of(right));
        let (Some(lt), Some(rt)) = types else {
            return 0;
        };
        let clause = self.clause.name();
        match op {
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom => {
                if !(computable(&lt) && computable(&rt)) {
                    self.refuse(format!(
                        "a comparison of {lt} with {rt} in {clause} is not allowed; compare numbers, text, booleans or dates"
                    ));
                }
                0
            }
            Operator::And | Operator::Or => 0,
            Operator::Plus | Operator::Minus | Operator::Multiply => {
                if !(is_number(&lt) && is_number(&rt)) {
                    self.refuse(format!(
                        "`{op}` in {clause} applies to integers and floats only, not {lt} and {rt}"
                    ));
                }
                0
            }
            Operator::Divide | Operator::Modulo => {
                if !(lt == rt && crate::sandbox::functions::supports(&lt)) {
                    self.refuse(format!(
                        "`{op}` in {clause} applies to two integers or two floats of one type, not {lt} and {rt}; cast one side"
                    ));
                }
                0
            }
            Operator::StringConcat => {
                if !((is_text(&lt) || lt.is_null()) && (is_text(&rt) || rt.is_null())) {
                    self.refuse(format!(
                        "`||` in {clause} concatenates text only; cast the other side with CAST(… AS VARCHAR)"
                    ));
                }
                ls.saturating_add(rs).max(1)
            }
            other => {
                self.refuse(format!(
                    "operator `{other}` in {clause} is not on the expression allow-list (see the README, \"The expression allow-list\")"
                ));
                0
            }
        }
    }

    fn function(&mut self, call: &ScalarFunction) -> u32 {
        let name = call.func.name();
        let scales: Vec<u32> = call.args.iter().map(|a| self.walk(a)).collect();
        let types: Vec<DataType> = call
            .args
            .iter()
            .map(|a| self.type_of(a).unwrap_or(DataType::Null))
            .collect();
        let clause = self.clause.name();
        let Some(allowed) = FUNCTIONS.iter().find(|f| f.name == name) else {
            self.refuse(format!(
                "function `{name}` in {clause} is not on the expression allow-list (see the README, \"The expression allow-list\")"
            ));
            return 0;
        };
        if let Some(t) = types.iter().find(|t| !computable(t)) {
            self.refuse(format!(
                "function `{name}` in {clause} takes a value of type {t}; only integers, floats, text, booleans, dates and timestamps can be computed on"
            ));
            return 0;
        }
        match (allowed.check)(&Call {
            args: &call.args,
            types: &types,
            scales: &scales,
        }) {
            Ok(scale) => scale,
            Err(why) => {
                self.refuse(format!("function `{name}` in {clause}: {why}"));
                0
            }
        }
    }
}

/// The literal an argument holds, seeing through the casts type coercion puts around literals.
fn literal_of(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(value, _) => Some(value),
        Expr::Cast(Cast { expr, .. }) | Expr::TryCast(TryCast { expr, .. }) => literal_of(expr),
        Expr::Alias(alias) => literal_of(&alias.expr),
        _ => None,
    }
}

fn variant_name(expr: &Expr) -> &'static str {
    match expr {
        Expr::SimilarTo(_) => "SIMILAR TO",
        Expr::GroupingSet(_) => "GROUPING SETS",
        Expr::Unnest(_) => "UNNEST",
        _ => "this kind of expression",
    }
}

/// Rewrites an allowed expression into its total form: `CAST` → `TRY_CAST`, `/` → `veil_div`,
/// `%` → `veil_mod` (see the module docs). The output has the same type as the input.
pub fn harden_expr(expr: Expr) -> datafusion::error::Result<Expr> {
    let div = crate::sandbox::functions::div();
    let modulo = crate::sandbox::functions::modulo();
    expr.transform_up(|e| {
        Ok(match e {
            Expr::Cast(Cast { expr, field }) => {
                Transformed::yes(Expr::TryCast(TryCast::new_from_field(expr, field)))
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: op @ (Operator::Divide | Operator::Modulo),
                right,
            }) => {
                let udf = if op == Operator::Divide {
                    Arc::clone(&div)
                } else {
                    Arc::clone(&modulo)
                };
                Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                    udf,
                    vec![*left, *right],
                )))
            }
            other => Transformed::no(other),
        })
    })
    .map(|t| t.data)
}

/// Rewrites every expression of every node of `plan` with [`harden_expr`], keeping every
/// output column's name, so the plan's schema is unchanged.
pub fn harden_plan(plan: LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
    plan.transform_up(|node| {
        let preserver = NamePreserver::new(&node);
        node.map_expressions(|expr| {
            let saved = preserver.save(&expr);
            Ok(Transformed::yes(saved.restore(harden_expr(expr)?)))
        })
    })
    .map(|t| t.data)
}
