//! Gate steps 1–2 on DataFusion's logical plan: what the query reads, and whether its shape
//! may leave the domain at all.
//!
//! The analysis never looks at data. It walks the plan the sandbox built from the operator's
//! SQL and either refuses it (naming every rule it breaks) or describes it as an
//! [`Analysis`]: the plan *below* the aggregate (which rows feed it), the privacy-unit column,
//! the group keys and the allowed aggregates. The gate then executes its own plan built from
//! that description (`bounding`), so nothing the operator wrote above the aggregate — a
//! HAVING, an ORDER BY on a true value, arithmetic on a true sum — ever runs.
//!
//! Column roles are followed through subqueries, aliases, casts and joins by a small lineage
//! walk ([`lineage`]): each output column of each plan node knows which base columns it
//! derives from and whether it is a plain pass-through of one of them.

use std::collections::HashMap;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Column;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, JoinType, LogicalPlan, Operator};

use crate::allow::{self, Clause};
use crate::disclosure::DisclosureRules;
use crate::policy::{Dataset, Role};
use crate::rules::{Refusal, Rule};

/// A base column of a registered table, with its policy.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseColumn {
    pub table: String,
    pub column: String,
    pub role: Role,
    pub is_unit: bool,
    pub(crate) unit_kind: String,
    pub bounds: Option<[f64; 2]>,
    pub keys: Option<Vec<String>>,
    pub integer: bool,
    /// The column's statistical disclosure rules (p % rule, dominance), if its policy has any.
    pub disclosure: Option<DisclosureRules>,
}

/// Where one output column of a plan node comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// Every base column it is computed from.
    pub bases: Vec<BaseColumn>,
    /// True when it is exactly one base column, passed through (possibly renamed or cast).
    pub direct: bool,
    /// At most how many times the widest base value its values can be (see
    /// `allow::EXPRESSION_SCALE_MAX`); 1 for a base column.
    pub scale: u32,
}

impl Origin {
    pub fn direct_base(&self) -> Option<&BaseColumn> {
        if self.direct {
            self.bases.first()
        } else {
            None
        }
    }
}

/// A group key of the released aggregate.
#[derive(Debug, Clone)]
pub struct GroupKey {
    /// The key expression over the aggregate's input.
    pub expr: Expr,
    /// The column name in the product.
    pub name: String,
    /// The public key set, when the key is a plain column that has one.
    pub keys: Option<Vec<String>>,
    /// The base columns the key is computed from (none for a constant).
    pub bases: Vec<BaseColumn>,
}

/// An allowed aggregate.
#[derive(Debug, Clone)]
pub enum MeasureKind {
    /// COUNT(*) or COUNT(expr): rows (with a non-null `of`).
    CountRows { of: Option<Expr> },
    /// COUNT(DISTINCT unit).
    CountUnits,
    /// SUM(column) over declared bounds.
    Sum {
        value: Expr,
        lo: f64,
        hi: f64,
        integer: bool,
        /// The summed column's disclosure rules: each released cell is checked against them
        /// on a noisy margin (`crate::disclosure`). The gate sums only a column passed
        /// through, so these are that one column's rules.
        disclosure: Option<DisclosureRules>,
    },
    /// AVG(column) over declared bounds: noisy SUM / noisy COUNT.
    Avg {
        value: Expr,
        lo: f64,
        hi: f64,
        integer: bool,
        /// Whether the averaged expression can be NULL in the input's schema. When it cannot
        /// and one unit adds at most one row to a group, its non-null count equals the
        /// group's distinct-unit count, and the release divides by that draw instead of a
        /// draw of its own.
        nullable: bool,
        /// The averaged column's disclosure rules, as for a sum: an average is its noisy sum
        /// over a count, so a cell one contributor dominates is withheld the same way.
        disclosure: Option<DisclosureRules>,
    },
}

#[derive(Debug, Clone)]
pub struct Measure {
    pub name: String,
    pub kind: MeasureKind,
}

/// One column of the product, in the operator's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputColumn {
    Group(usize),
    Measure(usize),
}

/// A query the gate accepted statically, described for execution.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The plan that feeds the aggregate: scans, filters, joins on the unit.
    pub(crate) input: LogicalPlan,
    /// The privacy-unit column in `input`'s schema.
    pub(crate) unit: Column,
    pub(crate) unit_kind: String,
    pub(crate) groups: Vec<GroupKey>,
    pub(crate) measures: Vec<Measure>,
    pub(crate) output: Vec<OutputColumn>,
    /// Names of the tables read.
    pub(crate) tables: Vec<String>,
}

impl Analysis {
    /// Names of the tables the query reads.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// The kind of privacy unit the query counts (e.g. "person").
    pub fn unit_kind(&self) -> &str {
        &self.unit_kind
    }

    /// The group keys, in the product's order, each with the base columns it is computed
    /// from (what `runtime::contribution` estimates a unit's groups from).
    pub fn group_keys(&self) -> &[GroupKey] {
        &self.groups
    }

    /// True when every group key has a public key set, so the set of released groups can be
    /// fixed before looking at the data.
    pub fn keys_are_public(&self) -> bool {
        self.groups.iter().all(|g| g.keys.is_some())
    }
}

/// Tables the query may read, by table name.
pub type Tables = HashMap<String, Dataset>;

/// Analyses a plan; refuses it with every broken rule found.
pub fn analyse(plan: &LogicalPlan, tables: &Tables) -> Result<Analysis, Refusal> {
    let mut refusal = Refusal::default();
    let mut used_tables = Vec::new();
    // Walk down from the top to the aggregate, remembering the output projection.
    let mut node = plan;
    let mut projection: Option<&datafusion::logical_expr::Projection> = None;
    let aggregate = loop {
        match node {
            LogicalPlan::Sort(sort) => {
                // ORDER BY is dropped: products are sorted by group key, so the order of
                // rows never reflects a true value.
                node = sort.input.as_ref();
            }
            LogicalPlan::Projection(p) if projection.is_none() => {
                projection = Some(p);
                node = p.input.as_ref();
            }
            LogicalPlan::Aggregate(aggregate) => break aggregate,
            LogicalPlan::Filter(_) if contains_aggregate(node) => {
                refusal.push(
                    Rule::ShapeHaving,
                    "HAVING filters groups on true aggregate values; remove it (small groups are already suppressed by the k-anonymity rule)",
                );
                node = node.inputs()[0];
            }
            LogicalPlan::Limit(_) => {
                refusal.push(
                    Rule::ShapeHaving,
                    "LIMIT/OFFSET choose groups by true values or order; remove it (products are sorted by group key)",
                );
                node = node.inputs()[0];
            }
            LogicalPlan::Distinct(_) | LogicalPlan::Window(_) => {
                refusal.push(
                    Rule::ShapeAggregateOnly,
                    "DISTINCT and window functions output per-row values; use GROUP BY with COUNT, SUM or AVG",
                );
                node = node.inputs()[0];
            }
            LogicalPlan::SubqueryAlias(alias) => node = alias.input.as_ref(),
            LogicalPlan::Union(_) => {
                refusal.push(
                    Rule::StatementConstruct,
                    "UNION/INTERSECT/EXCEPT are not supported; submit one aggregate query per template",
                );
                return Err(refusal);
            }
            other => {
                // No aggregate at the top: the query would output rows.
                refusal.push(
                    Rule::ShapeAggregateOnly,
                    "the query outputs raw rows; only aggregates leave the domain — use GROUP BY with COUNT(DISTINCT unit), COUNT(*), SUM or AVG",
                );
                // `lineage` hands back every reason found so far when it refuses.
                let origins = lineage(other, tables, &mut refusal, &mut used_tables)?;
                let output = projection.map_or(origins.clone(), |p| {
                    p.expr
                        .iter()
                        .map(|e| origin_of(e, other, &origins))
                        .collect()
                });
                for origin in output {
                    for base in origin.bases.iter().filter(|b| b.role == Role::Identifier) {
                        refusal.push(
                            Rule::StatementIdentifier,
                            format!(
                                "identifier column `{}` would be output; identifiers never leave the domain",
                                base.column
                            ),
                        );
                    }
                }
                return Err(refusal);
            }
        }
    };

    let input = aggregate.input.as_ref();
    let origins = lineage(input, tables, &mut refusal, &mut used_tables)?;
    let scales = scales_of(&origins);

    // Group keys. `group_of[i]` is the group key made of `group_expr[i]`, if it was accepted.
    let mut groups = Vec::new();
    let mut group_of: Vec<Option<usize>> = Vec::with_capacity(aggregate.group_expr.len());
    for (index, expr) in aggregate.group_expr.iter().enumerate() {
        group_of.push(None);
        if matches!(expr, Expr::GroupingSet(_)) {
            refusal.push(
                Rule::StatementConstruct,
                "GROUPING SETS, CUBE and ROLLUP are not supported; submit one template per grouping",
            );
            continue;
        }
        // A group key is a row-local function of quasi or public columns: the allow-list
        // admits no subquery (a value computed from other rows) and no aggregate.
        allow::check(expr, input.schema(), &scales, Clause::GroupBy, &mut refusal);
        let origin = origin_of(expr, input, &origins);
        for base in &origin.bases {
            match base.role {
                Role::Identifier => refusal.push(
                    Rule::StatementIdentifier,
                    format!("identifier column `{}` cannot be a group key", base.column),
                ),
                Role::Sensitive => refusal.push(
                    Rule::ShapeGroupKey,
                    format!(
                        "sensitive column `{}` cannot be a group key; it may appear only inside SUM or AVG",
                        base.column
                    ),
                ),
                Role::Quasi | Role::Public => {}
            }
        }
        let keys = origin.direct_base().and_then(|b| b.keys.clone());
        group_of[index] = Some(groups.len());
        groups.push(GroupKey {
            expr: expr.clone(),
            name: aggregate.schema.field(index).name().to_string(),
            keys,
            bases: origin.bases.clone(),
        });
    }

    // Aggregates. `measure_of[i]` is the measure made of `aggr_expr[i]`, if it was accepted.
    let mut measures = Vec::new();
    let mut measure_of: Vec<Option<usize>> = Vec::with_capacity(aggregate.aggr_expr.len());
    for (index, expr) in aggregate.aggr_expr.iter().enumerate() {
        measure_of.push(None);
        let name = aggregate
            .schema
            .field(aggregate.group_expr.len() + index)
            .name()
            .to_string();
        let inner = strip_aliases(expr);
        let Expr::AggregateFunction(function) = inner else {
            refusal.push(
                Rule::ShapeAggregateAllowList,
                "an aggregate the gate cannot read",
            );
            continue;
        };
        for arg in &function.params.args {
            allow::check(
                arg,
                input.schema(),
                &scales,
                Clause::Aggregate,
                &mut refusal,
            );
        }
        if let Some(kind) = measure_kind(function, input, &origins, &mut refusal) {
            measure_of[index] = Some(measures.len());
            measures.push(Measure { name, kind });
        }
    }

    // The privacy unit must reach the aggregate.
    let unit = origins
        .iter()
        .enumerate()
        .find(|(_, o)| o.direct_base().is_some_and(|b| b.is_unit))
        .map(|(i, o)| {
            let (qualifier, field) = input.schema().qualified_field(i);
            (
                Column::new(qualifier.cloned(), field.name()),
                o.bases[0].unit_kind.clone(),
            )
        });
    let Some((unit, unit_kind)) = unit else {
        refusal.push(
            Rule::BoundingUnit,
            "the privacy unit column does not reach the aggregation; keep it in every subquery's SELECT list so contributions can be bounded per unit",
        );
        return Err(refusal);
    };

    // The product's columns, in the operator's order.
    let mut output = Vec::new();
    match projection {
        Some(p) => {
            for (i, expr) in p.expr.iter().enumerate() {
                // DataFusion may alias twice (`COUNT(*)` is `count(*)` and then `AS n`).
                let unaliased = strip_aliases(expr);
                let Expr::Column(column) = unaliased else {
                    refusal.push(
                        Rule::ShapePostProcessing,
                        format!(
                            "output column `{}` computes on aggregates or constants; output the plain group keys and aggregates and derive further values from the product",
                            p.schema.field(i).name()
                        ),
                    );
                    continue;
                };
                // A column whose group key or aggregate was refused has its reason already.
                let n_keys = aggregate.group_expr.len();
                match aggregate.schema.index_of_column(column) {
                    Ok(at) if at < n_keys => {
                        if let Some(g) = group_of.get(at).copied().flatten() {
                            groups[g].name = p.schema.field(i).name().to_string();
                            output.push(OutputColumn::Group(g));
                        }
                    }
                    Ok(at) => {
                        if let Some(m) = measure_of.get(at - n_keys).copied().flatten() {
                            measures[m].name = p.schema.field(i).name().to_string();
                            output.push(OutputColumn::Measure(m));
                        }
                    }
                    Err(_) => refusal.push(
                        Rule::ShapePostProcessing,
                        "an output column the gate cannot trace to a group key or aggregate",
                    ),
                }
            }
        }
        None => {
            output.extend((0..groups.len()).map(OutputColumn::Group));
            output.extend((0..measures.len()).map(OutputColumn::Measure));
        }
    }
    if measures.is_empty() && refusal.is_empty() {
        refusal.push(
            Rule::ShapeAggregateOnly,
            "the query has no aggregate; add COUNT(DISTINCT unit), COUNT(*), SUM or AVG",
        );
    }
    if refusal.is_empty() {
        check_unique_names(&output, &groups, &measures, &mut refusal);
    }
    refusal.into_result()?;
    used_tables.sort();
    used_tables.dedup();
    // Everything the gate will evaluate, in its total form (`allow::harden_plan`).
    let harden_failed = |_| {
        Refusal::one(
            Rule::StatementConstruct,
            "the gate could not rewrite the query into its total form; simplify its expressions",
        )
    };
    let input = allow::harden_plan(input.clone()).map_err(harden_failed)?;
    for group in &mut groups {
        group.expr = allow::harden_expr(group.expr.clone()).map_err(harden_failed)?;
    }
    for measure in &mut measures {
        match &mut measure.kind {
            MeasureKind::CountRows { of: Some(expr) }
            | MeasureKind::Sum { value: expr, .. }
            | MeasureKind::Avg { value: expr, .. } => {
                *expr = allow::harden_expr(expr.clone()).map_err(harden_failed)?;
            }
            MeasureKind::CountRows { of: None } | MeasureKind::CountUnits => {}
        }
    }
    Ok(Analysis {
        input,
        unit,
        unit_kind,
        groups,
        measures,
        output,
        tables: used_tables,
    })
}

fn check_unique_names(
    output: &[OutputColumn],
    groups: &[GroupKey],
    measures: &[Measure],
    refusal: &mut Refusal,
) {
    let mut seen: Vec<&str> = Vec::new();
    for column in output {
        let name = match column {
            OutputColumn::Group(i) => groups[*i].name.as_str(),
            OutputColumn::Measure(i) => measures[*i].name.as_str(),
        };
        if seen.contains(&name) {
            refusal.push(
                Rule::ShapePostProcessing,
                format!("output column `{name}` appears twice; give each column its own alias"),
            );
        }
        seen.push(name);
    }
}

fn contains_aggregate(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(_) => true,
        LogicalPlan::Filter(_)
        | LogicalPlan::Projection(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::SubqueryAlias(_) => plan.inputs().into_iter().any(contains_aggregate),
        _ => false,
    }
}

fn measure_kind(
    function: &AggregateFunction,
    input: &LogicalPlan,
    origins: &[Origin],
    refusal: &mut Refusal,
) -> Option<MeasureKind> {
    let name = function.func.name().to_ascii_lowercase();
    let params = &function.params;
    if params.filter.is_some() || !params.order_by.is_empty() {
        refusal.push(
            Rule::ShapeAggregateAllowList,
            format!(
                "{name}(…) with FILTER or ORDER BY is not supported; put the condition in WHERE"
            ),
        );
        return None;
    }
    let arg = params.args.first();
    let arg_origin = arg.map(|a| origin_of(a, input, origins));
    let identifier_inside = |origin: &Origin| {
        origin
            .bases
            .iter()
            .find(|b| b.role == Role::Identifier && !(origin.direct && b.is_unit))
            .map(|b| b.column.clone())
    };
    match name.as_str() {
        "count" if params.distinct => match arg_origin.as_ref().and_then(|o| o.direct_base()) {
            Some(base) if base.is_unit => Some(MeasureKind::CountUnits),
            _ => {
                refusal.push(
                        Rule::ShapeAggregateAllowList,
                        "COUNT(DISTINCT …) is allowed only on the privacy unit column; a distinct count of other values has no bounded sensitivity",
                    );
                None
            }
        },
        "count" => match (arg, &arg_origin) {
            (None, _) | (Some(Expr::Literal(..)), _) => Some(MeasureKind::CountRows { of: None }),
            (Some(expr), Some(origin)) => {
                if let Some(column) = identifier_inside(origin) {
                    refusal.push(
                        Rule::StatementIdentifier,
                        format!("identifier column `{column}` may not be used inside COUNT; use COUNT(*)"),
                    );
                    return None;
                }
                if origin.direct_base().is_some_and(|b| b.is_unit) {
                    return Some(MeasureKind::CountRows { of: None });
                }
                Some(MeasureKind::CountRows {
                    of: Some(expr.clone()),
                })
            }
            (Some(_), None) => None,
        },
        "sum" | "avg" => {
            if params.distinct {
                refusal.push(
                    Rule::ShapeAggregateAllowList,
                    format!(
                        "{} (DISTINCT …) is not allowed; remove DISTINCT",
                        name.to_uppercase()
                    ),
                );
                return None;
            }
            let (Some(expr), Some(origin)) = (arg, &arg_origin) else {
                return None;
            };
            if let Some(column) = origin.bases.iter().find(|b| b.role == Role::Identifier) {
                refusal.push(
                    Rule::StatementIdentifier,
                    format!(
                        "identifier column `{}` cannot be summed or averaged",
                        column.column
                    ),
                );
                return None;
            }
            let Some(base) = origin.direct_base() else {
                refusal.push(
                    Rule::ShapeUnboundedValue,
                    format!(
                        "{}(…) of a computed expression has no declared bounds; aggregate a column with declared bounds and compute from the product",
                        name.to_uppercase()
                    ),
                );
                return None;
            };
            let Some([lo, hi]) = base.bounds else {
                refusal.push(
                    Rule::ShapeUnboundedValue,
                    format!(
                        "column `{}` has no declared bounds, so {} over it has no known sensitivity; the bureau must add bounds to its policy",
                        base.column,
                        name.to_uppercase()
                    ),
                );
                return None;
            };
            if name == "sum" {
                Some(MeasureKind::Sum {
                    value: expr.clone(),
                    lo,
                    hi,
                    integer: base.integer,
                    disclosure: base.disclosure,
                })
            } else {
                Some(MeasureKind::Avg {
                    value: expr.clone(),
                    lo,
                    hi,
                    integer: base.integer,
                    nullable: expr.nullable(input.schema().as_ref()).unwrap_or(true),
                    disclosure: base.disclosure,
                })
            }
        }
        "min" | "max" => {
            refusal.push(
                Rule::ShapeMinMax,
                format!(
                    "{}(…) reveals one unit's value; use AVG or SUM over bounded columns",
                    name.to_uppercase()
                ),
            );
            None
        }
        other => {
            refusal.push(
                Rule::ShapeAggregateAllowList,
                format!(
                    "aggregate `{other}` is not on the allow-list (COUNT, COUNT(DISTINCT unit), SUM, AVG)"
                ),
            );
            None
        }
    }
}

/// The origin of an expression evaluated over `plan`'s output.
fn origin_of(expr: &Expr, plan: &LogicalPlan, origins: &[Origin]) -> Origin {
    let passthrough = strip_passthrough(expr);
    if let Expr::Column(column) = passthrough
        && let Ok(index) = plan.schema().index_of_column(column)
        && let Some(origin) = origins.get(index)
    {
        return origin.clone();
    }
    let mut bases = Vec::new();
    for column in expr.column_refs() {
        if let Ok(index) = plan.schema().index_of_column(column)
            && let Some(origin) = origins.get(index)
        {
            for base in &origin.bases {
                if !bases.contains(base) {
                    bases.push(base.clone());
                }
            }
        }
    }
    Origin {
        bases,
        direct: false,
        scale: 1,
    }
}

/// Removes every alias around an expression.
fn strip_aliases(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => strip_aliases(&alias.expr),
        other => other,
    }
}

/// Aliases and casts keep a column what it is.
fn strip_passthrough(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => strip_passthrough(&alias.expr),
        Expr::Cast(cast) => strip_passthrough(&cast.expr),
        Expr::TryCast(cast) => strip_passthrough(&cast.expr),
        other => other,
    }
}

/// Computes the origin of every output column of `plan`, refusing nodes and expressions the
/// gate cannot reason about.
pub fn lineage(
    plan: &LogicalPlan,
    tables: &Tables,
    refusal: &mut Refusal,
    used: &mut Vec<String>,
) -> Result<Vec<Origin>, Refusal> {
    let origins = match plan {
        LogicalPlan::TableScan(scan) => {
            let table = scan.table_name.table().to_string();
            let Some(dataset) = tables.get(&table) else {
                refusal.push(
                    Rule::StatementScope,
                    format!("table `{table}` is not in this job's grant"),
                );
                return Err(std::mem::take(refusal));
            };
            used.push(table.clone());
            if !scan.filters.is_empty() || scan.fetch.is_some() {
                refusal.push(Rule::StatementConstruct, "a pre-filtered table scan");
            }
            scan.projected_schema
                .fields()
                .iter()
                .map(|field| {
                    let policy = dataset.policy.column(field.name());
                    Origin {
                        bases: vec![BaseColumn {
                            table: table.clone(),
                            column: field.name().to_string(),
                            // A column without a policy cannot exist (registration refuses
                            // it); if one appears anyway, treat it as an identifier.
                            role: policy.map_or(Role::Identifier, |p| p.role),
                            is_unit: field.name() == &dataset.policy.privacy_unit,
                            unit_kind: dataset.policy.unit_kind.clone(),
                            bounds: policy.and_then(|p| p.bounds),
                            keys: policy.and_then(|p| p.key_set().map(|k| k.into_owned())),
                            integer: field.data_type().is_integer(),
                            disclosure: policy.and_then(DisclosureRules::of),
                        }],
                        direct: true,
                        scale: 1,
                    }
                })
                .collect()
        }
        LogicalPlan::SubqueryAlias(alias) => lineage(&alias.input, tables, refusal, used)?,
        LogicalPlan::Sort(sort) => {
            let origins = lineage(&sort.input, tables, refusal, used)?;
            if sort.fetch.is_some() {
                refusal.push(
                    Rule::ShapeHaving,
                    "LIMIT inside a subquery chooses rows by true values or order; remove it",
                );
            }
            let scales = scales_of(&origins);
            for sort_expr in &sort.expr {
                allow::check(
                    &sort_expr.expr,
                    sort.input.schema(),
                    &scales,
                    Clause::OrderBy,
                    refusal,
                );
                check_identifiers(&sort_expr.expr, &sort.input, &origins, "ORDER BY", refusal);
            }
            origins
        }
        LogicalPlan::Filter(filter) => {
            let origins = lineage(&filter.input, tables, refusal, used)?;
            allow::check(
                &filter.predicate,
                filter.input.schema(),
                &scales_of(&origins),
                Clause::Where,
                refusal,
            );
            check_identifiers(&filter.predicate, &filter.input, &origins, "WHERE", refusal);
            origins
        }
        LogicalPlan::Projection(projection) => {
            let input_origins = lineage(&projection.input, tables, refusal, used)?;
            let scales = scales_of(&input_origins);
            let mut origins = Vec::with_capacity(projection.expr.len());
            for expr in &projection.expr {
                let mut origin = origin_of(expr, &projection.input, &input_origins);
                let scale = allow::check(
                    expr,
                    projection.input.schema(),
                    &scales,
                    Clause::Select,
                    refusal,
                );
                let is_unit_passthrough = origin.direct_base().is_some_and(|b| b.is_unit);
                if !is_unit_passthrough {
                    check_identifiers(expr, &projection.input, &input_origins, "SELECT", refusal);
                }
                if !origin.direct {
                    origin.scale = scale;
                }
                origins.push(origin);
            }
            origins
        }
        LogicalPlan::Join(join) => {
            let left = lineage(&join.left, tables, refusal, used)?;
            let right = lineage(&join.right, tables, refusal, used)?;
            check_join(join, &left, &right, refusal);
            left.into_iter().chain(right).collect()
        }
        LogicalPlan::Aggregate(_) => {
            refusal.push(
                Rule::StatementConstruct,
                "nested aggregates are not supported; aggregate once, at the top of the query",
            );
            return Err(std::mem::take(refusal));
        }
        LogicalPlan::Dml(_)
        | LogicalPlan::Ddl(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::Statement(_)
        | LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::DescribeTable(_) => {
            refusal.push(Rule::StatementReadOnly, "only a read-only SELECT may run");
            return Err(std::mem::take(refusal));
        }
        LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {
            refusal.push(
                Rule::StatementConstruct,
                "constant tables (VALUES, SELECT without FROM) have no privacy unit; read a granted table",
            );
            return Err(std::mem::take(refusal));
        }
        _ => {
            refusal.push(
                Rule::StatementConstruct,
                "the query uses a construct the gate does not support (window, set operation, DISTINCT, LIMIT, UNNEST or recursion below the aggregate)",
            );
            return Err(std::mem::take(refusal));
        }
    };
    Ok(origins)
}

/// The scale of every column of a node's output, by position.
fn scales_of(origins: &[Origin]) -> Vec<u32> {
    origins.iter().map(|o| o.scale).collect()
}

/// Identifier columns may not be used in WHERE, SELECT or ORDER BY (the expression allow-list,
/// `allow::check`, is checked separately).
fn check_identifiers(
    expr: &Expr,
    plan: &LogicalPlan,
    origins: &[Origin],
    clause: &str,
    refusal: &mut Refusal,
) {
    let origin = origin_of(expr, plan, origins);
    for base in origin.bases.iter().filter(|b| b.role == Role::Identifier) {
        refusal.push(
            Rule::StatementIdentifier,
            format!(
                "identifier column `{}` is used in {clause}; identifiers may only name the privacy unit in COUNT(DISTINCT …) and in joins",
                base.column
            ),
        );
    }
}

/// A join must be an inner equi-join on the privacy unit of both sides.
fn check_join(
    join: &datafusion::logical_expr::Join,
    left: &[Origin],
    right: &[Origin],
    refusal: &mut Refusal,
) {
    // Every join condition is evaluated on every pair of rows, so it must be total and
    // bounded like any other expression.
    let (left_scales, right_scales) = (scales_of(left), scales_of(right));
    for (l, r) in &join.on {
        allow::check(l, join.left.schema(), &left_scales, Clause::JoinOn, refusal);
        allow::check(
            r,
            join.right.schema(),
            &right_scales,
            Clause::JoinOn,
            refusal,
        );
    }
    if let Some(filter) = &join.filter {
        let both: Vec<u32> = left_scales.iter().chain(&right_scales).copied().collect();
        allow::check(filter, &join.schema, &both, Clause::JoinOn, refusal);
    }
    if join.join_type != JoinType::Inner {
        refusal.push(
            Rule::BoundingUnit,
            "only INNER JOIN is allowed; an outer join invents rows that belong to no unit",
        );
        return;
    }
    let left_schema = join.left.schema();
    let right_schema = join.right.schema();
    let side_origin = |expr: &Expr| -> Option<(bool, Origin)> {
        let column = match strip_passthrough(expr) {
            Expr::Column(c) => c,
            _ => return None,
        };
        if let Ok(i) = left_schema.index_of_column(column) {
            return left.get(i).cloned().map(|o| (true, o));
        }
        if let Ok(i) = right_schema.index_of_column(column) {
            return right.get(i).cloned().map(|o| (false, o));
        }
        None
    };
    let mut pairs: Vec<(Expr, Expr)> = join.on.clone();
    let mut others: Vec<Expr> = Vec::new();
    if let Some(filter) = &join.filter {
        for conjunct in split_conjunction(filter) {
            match conjunct {
                Expr::BinaryExpr(BinaryExpr {
                    left: l,
                    op: Operator::Eq,
                    right: r,
                }) => pairs.push((l.as_ref().clone(), r.as_ref().clone())),
                other => others.push(other.clone()),
            }
        }
    }
    let mut on_unit = false;
    for (l, r) in &pairs {
        match (side_origin(l), side_origin(r)) {
            (Some((l_left, lo)), Some((r_left, ro))) if l_left != r_left => {
                match (lo.direct_base(), ro.direct_base()) {
                    (Some(a), Some(b)) if a.is_unit && b.is_unit => {
                        if a.unit_kind == b.unit_kind {
                            on_unit = true;
                        } else {
                            refusal.push(
                                Rule::BoundingUnit,
                                format!(
                                    "the join pairs a `{}` unit with a `{}` unit; join only units of the same kind",
                                    a.unit_kind, b.unit_kind
                                ),
                            );
                        }
                    }
                    _ => others.push(Expr::BinaryExpr(BinaryExpr::new(
                        Box::new(l.clone()),
                        Operator::Eq,
                        Box::new(r.clone()),
                    ))),
                }
            }
            _ => others.push(Expr::BinaryExpr(BinaryExpr::new(
                Box::new(l.clone()),
                Operator::Eq,
                Box::new(r.clone()),
            ))),
        }
    }
    if !on_unit {
        refusal.push(
            Rule::BoundingUnit,
            "a join must be an INNER JOIN … ON on the privacy unit columns of both tables (e.g. ON a.person_id = b.legal_rep_id), so each joined row still belongs to one unit",
        );
    }
    let both: Vec<Origin> = left.iter().chain(right).cloned().collect();
    for expr in others {
        let bases: Vec<&BaseColumn> = expr
            .column_refs()
            .into_iter()
            .filter_map(|c| join.schema.index_of_column(c).ok())
            .filter_map(|i| both.get(i))
            .flat_map(|o| o.bases.iter())
            .collect();
        for base in bases.iter().filter(|b| b.role == Role::Identifier) {
            refusal.push(
                Rule::StatementIdentifier,
                format!(
                    "identifier column `{}` is used in a join condition other than the unit equality",
                    base.column
                ),
            );
        }
    }
}

fn split_conjunction(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            let mut parts = split_conjunction(left);
            parts.extend(split_conjunction(right));
            parts
        }
        other => vec![other],
    }
}

/// The Arrow type a measure's value is summed in.
pub fn value_type(integer: bool) -> DataType {
    if integer {
        DataType::Int64
    } else {
        DataType::Float64
    }
}
