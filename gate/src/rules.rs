//! The named rules of the release gate. Every refusal names at least one of them, with a
//! message that tells the operator what to change. Codes are stable: tests, the data-driven
//! gate files and operators' scripts match on them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One rule of the gate (DESIGN.md, "The release gate", steps 1–7, plus the grant and
/// template checks that run before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rule {
    // Step 1: statement policy.
    /// The SQL does not parse or holds no statement.
    StatementParse,
    /// More than one statement.
    StatementSingle,
    /// DDL, DML, COPY, SET, EXPLAIN or any other non-query statement.
    StatementReadOnly,
    /// A table outside the grant's scope, or an unknown column.
    StatementScope,
    /// An identifier column used outside the privacy-unit role.
    StatementIdentifier,
    /// Parameters missing, unknown, mistyped or outside their allowed values.
    StatementParameters,
    /// A construct the gate cannot reason about (set operations, nested aggregates …).
    StatementConstruct,
    /// A function, operator, cast or type outside the expression allow-list (`gate::allow`),
    /// or an argument that could make an allowed one fail or grow without bound.
    StatementExpression,
    /// A subquery inside an expression (anywhere but a derived table in FROM).
    StatementSubquery,
    // Step 2: shape.
    /// The result is not an aggregate (raw rows, `SELECT *`, no GROUP BY aggregate).
    ShapeAggregateOnly,
    /// An aggregate outside the allow-list (COUNT, COUNT DISTINCT unit, SUM, AVG).
    ShapeAggregateAllowList,
    /// MIN or MAX, which reveal one unit's value.
    ShapeMinMax,
    /// HAVING, LIMIT or a filter on true aggregate values.
    ShapeHaving,
    /// A group key that is not a quasi-identifier or public column.
    ShapeGroupKey,
    /// SUM/AVG over a column without declared bounds.
    ShapeUnboundedValue,
    /// Arithmetic or casts applied to aggregates in the output.
    ShapePostProcessing,
    // Step 3: contribution bounding.
    /// A join that is not an inner equi-join on the privacy unit, or a lost unit column.
    BoundingUnit,
    // WASM jobs.
    /// The mapper module is invalid, imports more than the host ABI, or cannot start.
    WasmModule,
    /// The mapper's input query: no privacy unit, or a column type the payload cannot carry.
    WasmInput,
    /// The declared output schema: names, types, bounds, key sets, defaults.
    WasmOutputSchema,
    // Step 5: noise.
    /// The approval's ε, δ, bounds and limits cannot make a valid OpenDP measurement for this
    /// query (a sensitivity too large, a δ too small for any threshold).
    PrivacyParameters,
    // Step 6: budget.
    /// The privacy budget of the grant or a dataset is exhausted for this period.
    BudgetExhausted,
    /// An identical job is already running; its product will be returned when it finishes.
    BudgetIdenticalInProgress,
    // Before the gate: authorization.
    /// The template is not approved (or was revoked, or its bytes changed).
    TemplateNotApproved,
    /// No grant covers the job's operator, tables and date.
    GrantScope,
    /// The grant exists but is outside its term.
    GrantTerm,
    /// A dataset's object on object storage is not the one registered (its size or ETag
    /// differ): the bureau registers the new object as a new version.
    DatasetChanged,
    /// Resource limits (memory, time) stopped the query.
    ResourcesLimit,
}

impl Rule {
    /// Stable code, `family.rule`.
    pub fn code(self) -> &'static str {
        match self {
            Self::StatementParse => "statement.parse",
            Self::StatementSingle => "statement.single",
            Self::StatementReadOnly => "statement.read_only",
            Self::StatementScope => "statement.scope",
            Self::StatementIdentifier => "statement.identifier",
            Self::StatementParameters => "statement.parameters",
            Self::StatementConstruct => "statement.construct",
            Self::StatementExpression => "statement.expression",
            Self::StatementSubquery => "statement.subquery",
            Self::ShapeAggregateOnly => "shape.aggregate_only",
            Self::ShapeAggregateAllowList => "shape.aggregate_allow_list",
            Self::ShapeMinMax => "shape.min_max",
            Self::ShapeHaving => "shape.having",
            Self::ShapeGroupKey => "shape.group_key",
            Self::ShapeUnboundedValue => "shape.unbounded_value",
            Self::ShapePostProcessing => "shape.post_processing",
            Self::BoundingUnit => "bounding.unit",
            Self::WasmModule => "wasm.module",
            Self::WasmInput => "wasm.input",
            Self::WasmOutputSchema => "wasm.output_schema",
            Self::PrivacyParameters => "privacy.parameters",
            Self::BudgetExhausted => "budget.exhausted",
            Self::BudgetIdenticalInProgress => "budget.identical_in_progress",
            Self::TemplateNotApproved => "template.not_approved",
            Self::GrantScope => "grant.scope",
            Self::GrantTerm => "grant.term",
            Self::DatasetChanged => "dataset.changed",
            Self::ResourcesLimit => "resources.limit",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One broken rule and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub rule: Rule,
    pub message: String,
}

/// Why a job or template was refused: every rule that failed, in the order found.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Refusal {
    pub violations: Vec<Violation>,
}

impl Refusal {
    pub fn one(rule: Rule, message: impl Into<String>) -> Self {
        Self {
            violations: vec![Violation {
                rule,
                message: message.into(),
            }],
        }
    }

    pub fn push(&mut self, rule: Rule, message: impl Into<String>) {
        let message = message.into();
        // The same rule with the same words, found twice in one plan, is one reason.
        if !self
            .violations
            .iter()
            .any(|v| v.rule == rule && v.message == message)
        {
            self.violations.push(Violation { rule, message });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// The rules that failed, by code.
    pub fn codes(&self) -> Vec<&'static str> {
        self.violations.iter().map(|v| v.rule.code()).collect()
    }

    pub fn into_result(self) -> Result<(), Refusal> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "refused by the release gate:")?;
        for violation in &self.violations {
            writeln!(f, "  - [{}] {}", violation.rule, violation.message)?;
        }
        Ok(())
    }
}
