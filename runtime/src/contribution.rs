//! Contribution bounding, made visible before a job runs: whether a template's grouping lets
//! one privacy unit fall in more groups than the approval's `max_groups`.
//!
//! The gate keeps at most `max_groups` groups per unit and drops the unit's rows in the
//! others (`veil_gate`'s bounding step). That is what makes the noise small, and it is
//! silent: a template `GROUP BY year, city` approved with `max_groups = 1` over a table with
//! three years per person keeps one year of each person, and every total comes out at about
//! a third of the truth. [`max_groups_warnings`] says so at approval and at pre-flight,
//! before any ε is spent; the product's manifest then counts, with noise, the units the
//! bounding cut.
//!
//! # The estimate
//! A unit falls in at most as many groups as it has rows, and at most in as many as the
//! product, over the group keys' base columns, of its distinct values in each (a key computed
//! from columns has no more values than they have together). Per table, from its
//! registration report ([`crate::quality`]), at the 99th percentile over the units:
//! `min(rows per unit, ∏ values per unit of each base column)`. The unit's own column and a
//! column with one value per unit contribute 1; a column the report has no figure for (not
//! text or integer, or a report from before Veil counted values) contributes nothing but
//! leaves the rows-per-unit bound. Group keys from several tables (a join on the unit)
//! multiply their tables' estimates. The figures are the registered table's, before any
//! WHERE clause, so a filtered query may put units in fewer groups: warnings say "may".
//!
//! # Who sees what
//! The bureau owns the data and may see anything about it: its warning gives the figures and
//! suggests `--max-groups N` with `N` the estimate (at most
//! [`MAX_GROUPS_PER_UNIT_MAX`]). An operator may learn about the data only through
//! differentially private releases, and the 99th percentiles are exact statistics of the
//! in-domain rows — and so is whether they exceed `max_groups`: a warning shown only when they
//! do would be a one-bit exact query, which an operator could repeat with templates of
//! different limits to read the figure itself. So an operator's warning is decided on what the
//! operator already knows — the query, the policies (roles, public key sets) and the
//! approval — and says what *would* happen to a unit with more groups than `max_groups`, that
//! the bureau has the figures, and that the manifest counts the units cut (with noise).

use std::collections::BTreeMap;

use veil_gate::Analysis;
use veil_gate::analysis::Tables;

use crate::catalog;
use crate::error::Result;
use crate::quality::QualityReport;
use crate::store::Store;
use crate::templates::MAX_GROUPS_PER_UNIT_MAX;

/// Who reads the warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The bureau (template approval): the figures from the registration report and the
    /// `--max-groups` they support.
    Bureau,
    /// An operator (job pre-flight, dry run): a warning decided on the query, the policies
    /// and the approval alone, with no figure from the data (see the module docs).
    Operator,
}

/// One base column of a group key, as the estimate needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyColumn {
    table: String,
    column: String,
    /// The column is the table's privacy unit: one value per unit.
    is_unit: bool,
    /// The size of the column's public key set, if its policy declares one.
    keys: Option<usize>,
}

/// Warnings for a job over `tables` (the datasets it may read, by table name) whose group
/// keys are `analysis`'s, under an approval of `max_groups`: one per reason a unit may fall
/// in more groups than `max_groups` and so have contributions dropped; empty when none.
/// What the bureau's warning holds and what an operator's may not is in the module docs.
///
/// Reads the stored quality reports of the tables the group keys come from (for the bureau
/// only); a table registered before reports existed gives no estimate, hence no warning.
pub fn max_groups_warnings(
    store: &Store,
    tables: &Tables,
    analysis: &Analysis,
    max_groups: u32,
    audience: Audience,
) -> Result<Vec<String>> {
    let columns: Vec<KeyColumn> = analysis
        .group_keys()
        .iter()
        .flat_map(|key| &key.bases)
        .map(|base| KeyColumn {
            table: base.table.clone(),
            column: base.column.clone(),
            is_unit: base.is_unit,
            keys: base.keys.as_ref().map(Vec::len),
        })
        .collect();
    let mut reports = BTreeMap::new();
    if audience == Audience::Bureau {
        for column in &columns {
            if reports.contains_key(&column.table) {
                continue;
            }
            if let Some(dataset) = tables.get(&column.table)
                && let Some(report) = catalog::quality_report(store, &dataset.id)?
            {
                reports.insert(column.table.clone(), report);
            }
        }
    }
    Ok(warnings_for(
        &columns,
        analysis.unit_kind(),
        &reports,
        max_groups,
        audience,
    ))
}

/// [`max_groups_warnings`] over the group keys' base `columns` and the `reports` by table.
fn warnings_for(
    columns: &[KeyColumn],
    unit_kind: &str,
    reports: &BTreeMap<String, QualityReport>,
    max_groups: u32,
    audience: Audience,
) -> Vec<String> {
    // Distinct base columns, the unit's own left out: it never splits a unit.
    let mut varying: Vec<&KeyColumn> = Vec::new();
    for column in columns.iter().filter(|c| !c.is_unit) {
        if !varying
            .iter()
            .any(|v| v.table == column.table && v.column == column.column)
        {
            varying.push(column);
        }
    }
    if varying.is_empty() {
        return Vec::new();
    }
    let several_tables = varying.iter().any(|c| c.table != varying[0].table);
    let named: Vec<String> = varying
        .iter()
        .map(|c| {
            if several_tables {
                format!("`{}.{}`", c.table, c.column)
            } else {
                format!("`{}`", c.column)
            }
        })
        .collect();
    let named = named.join(", ");
    let unit = if unit_kind.trim().is_empty() {
        "unit"
    } else {
        unit_kind
    };
    match audience {
        Audience::Bureau => {
            let Some((groups, figures)) = estimate(&varying, reports, unit) else {
                return Vec::new();
            };
            if groups <= u64::from(max_groups) {
                return Vec::new();
            }
            let suggested = groups.min(u64::from(MAX_GROUPS_PER_UNIT_MAX));
            let capped = if suggested < groups {
                " (the most an approval allows; the rest stay dropped)".to_string()
            } else {
                String::new()
            };
            vec![format!(
                "grouping by {named}: one {unit} may fall in up to {groups} groups ({figures}), more than max_groups = {max_groups}; each {unit}'s contributions beyond {max_groups} group(s) are dropped, so totals are truncated — approve with `--max-groups {suggested}`{capped} to keep them (the noise grows in proportion to max_groups)"
            )]
        }
        Audience::Operator => {
            // What the policies alone allow: the product of the public key sets' sizes, or
            // no bound when a column has none.
            let allowed = varying.iter().try_fold(1u64, |product, c| {
                c.keys.map(|keys| product.saturating_mul(keys as u64))
            });
            if allowed.is_some_and(|groups| groups <= u64::from(max_groups)) {
                return Vec::new();
            }
            vec![format!(
                "grouping by {named}: a {unit} with rows in more than {max_groups} of these groups counts in {max_groups} of them only (max_groups = {max_groups}); its other contributions are dropped and those totals are truncated. The bureau sees from the registered data whether that happens and can approve a higher --max-groups; the product's manifest counts, with noise, the {unit}s whose contributions were cut"
            )]
        }
    }
}

/// The groups one unit may fall in, at the 99th percentile, with the figures it rests on
/// for the bureau's message; `None` when a table of the columns has no report with units.
fn estimate(
    varying: &[&KeyColumn],
    reports: &BTreeMap<String, QualityReport>,
    unit: &str,
) -> Option<(u64, String)> {
    let mut by_table: BTreeMap<&str, Vec<&KeyColumn>> = BTreeMap::new();
    for column in varying {
        by_table.entry(&column.table).or_default().push(column);
    }
    let mut groups = 1u64;
    let mut figures = Vec::new();
    for (table, columns) in by_table {
        let report = reports.get(table)?;
        let rows = report.unit.rows_per_unit?.p99;
        let mut product = 1u64;
        let mut values = Vec::new();
        for column in columns {
            match report.values_per_unit(&column.column) {
                Some(v) => {
                    product = product.saturating_mul(v.p99.max(1));
                    values.push(format!("`{}` {}", column.column, v.p99));
                }
                // No figure: only the rows bound holds.
                None => product = u64::MAX,
            }
        }
        groups = groups.saturating_mul(rows.min(product).max(1));
        let values = if values.is_empty() {
            String::new()
        } else {
            format!("; distinct values per {unit}: {}", values.join(", "))
        };
        figures.push(format!(
            "99th percentiles in the registration report of `{table}`: {rows} row(s) per {unit}{values}"
        ));
    }
    Some((groups, figures.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::{RowsPerUnit, UnitCheck, ValuesPerUnit};

    fn column(table: &str, column: &str, keys: Option<usize>) -> KeyColumn {
        KeyColumn {
            table: table.into(),
            column: column.into(),
            is_unit: false,
            keys,
        }
    }

    /// A report of a table with `rows_p99` rows per unit and the columns' values per unit.
    fn report(rows_p99: u64, values: &[(&str, u64)]) -> QualityReport {
        QualityReport {
            rows: 1_000,
            nulls: Vec::new(),
            key_sets: Vec::new(),
            bounds: Vec::new(),
            unit: UnitCheck {
                column: "person_id".into(),
                nulls: 0,
                blanks: 0,
                units: 400,
                rows_per_unit: Some(RowsPerUnit {
                    min: 1,
                    median: rows_p99,
                    p99: rows_p99,
                    max: rows_p99,
                }),
            },
            values_per_unit: values
                .iter()
                .map(|(column, p99)| ValuesPerUnit {
                    column: (*column).into(),
                    min: 1,
                    median: 1,
                    p99: *p99,
                    max: *p99,
                })
                .collect(),
            issues_accepted: false,
        }
    }

    fn reports(table: &str, report: QualityReport) -> BTreeMap<String, QualityReport> {
        [(table.to_string(), report)].into_iter().collect()
    }

    #[test]
    fn warns_the_bureau_when_years_put_a_person_in_several_groups() {
        let columns = [
            column("social_insurance", "year", None),
            column("social_insurance", "city", Some(11)),
        ];
        let reports = reports("social_insurance", report(3, &[("year", 3), ("city", 1)]));
        let warnings = warnings_for(&columns, "person", &reports, 1, Audience::Bureau);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let warning = &warnings[0];
        for said in [
            "grouping by `year`, `city`",
            "up to 3 groups",
            "more than max_groups = 1",
            "are dropped, so totals are truncated",
            "`--max-groups 3`",
            "3 row(s) per person",
            "`year` 3, `city` 1",
        ] {
            assert!(warning.contains(said), "{said:?} missing from {warning}");
        }
        // Approved with enough groups: nothing to say.
        assert!(warnings_for(&columns, "person", &reports, 3, Audience::Bureau).is_empty());
    }

    #[test]
    fn the_estimate_is_the_smaller_of_rows_and_the_product_of_values() {
        let columns = [column("t", "year", None), column("t", "district", None)];
        // Three rows per person, but up to 3 × 2 value combinations: rows bound it.
        let by_rows = reports("t", report(3, &[("year", 3), ("district", 2)]));
        let warning = &warnings_for(&columns, "person", &by_rows, 1, Audience::Bureau)[0];
        assert!(warning.contains("up to 3 groups"), "{warning}");
        // Twelve rows per person, one year and two districts: values bound it.
        let by_values = reports("t", report(12, &[("year", 1), ("district", 2)]));
        let warning = &warnings_for(&columns, "person", &by_values, 1, Audience::Bureau)[0];
        assert!(warning.contains("up to 2 groups"), "{warning}");
        // A column with one value per person, or the unit's own column, adds no group.
        let single = [
            column("t", "city", None),
            KeyColumn {
                is_unit: true,
                ..column("t", "person_id", None)
            },
        ];
        let one_city = reports("t", report(12, &[("city", 1)]));
        assert!(warnings_for(&single, "person", &one_city, 1, Audience::Bureau).is_empty());
        // A column without a figure (an older report) leaves the rows bound.
        let older = reports("t", report(4, &[]));
        let warning = &warnings_for(&single, "person", &older, 1, Audience::Bureau)[0];
        assert!(warning.contains("up to 4 groups"), "{warning}");
        // No report at all: no estimate, no warning.
        assert!(warnings_for(&columns, "person", &BTreeMap::new(), 1, Audience::Bureau).is_empty());
    }

    #[test]
    fn the_suggestion_is_capped_at_what_an_approval_allows() {
        let columns = [column("t", "day", None)];
        let reports = reports("t", report(5_000, &[("day", 5_000)]));
        let warning = &warnings_for(&columns, "person", &reports, 1, Audience::Bureau)[0];
        assert!(
            warning.contains(&format!("`--max-groups {MAX_GROUPS_PER_UNIT_MAX}`"))
                && warning.contains("the most an approval allows"),
            "{warning}"
        );
    }

    #[test]
    fn an_operator_gets_no_figure_from_the_data() {
        let columns = [
            column("social_insurance", "year", None),
            column("social_insurance", "city", Some(11)),
        ];
        let reports = reports("social_insurance", report(37, &[("year", 37), ("city", 1)]));
        let warnings = warnings_for(&columns, "person", &reports, 1, Audience::Operator);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let warning = &warnings[0];
        assert!(
            warning.contains("grouping by `year`, `city`")
                && warning.contains("counts in 1 of them only")
                && warning.contains("manifest counts, with noise"),
            "{warning}"
        );
        // Neither the report's figures nor a suggestion derived from them.
        assert!(!warning.contains("37") && !warning.contains("--max-groups 3"));
        // The same warning whatever the data: decided on the query and policies alone.
        let other = reports_with_one_year();
        assert_eq!(
            warnings_for(&columns, "person", &other, 1, Audience::Operator),
            warnings
        );
        // Public key sets small enough for max_groups: no unit can be cut.
        let keyed = [column("t", "gender", Some(2))];
        assert!(warnings_for(&keyed, "person", &other, 2, Audience::Operator).is_empty());
        assert_eq!(
            warnings_for(&keyed, "person", &other, 1, Audience::Operator).len(),
            1
        );
    }

    fn reports_with_one_year() -> BTreeMap<String, QualityReport> {
        reports("social_insurance", report(1, &[("year", 1), ("city", 1)]))
    }

    #[test]
    fn tables_joined_on_the_unit_multiply_their_estimates() {
        let columns = [
            column("social_insurance", "year", None),
            column("enterprise_registry", "rating", None),
        ];
        let mut both = reports("social_insurance", report(3, &[("year", 3)]));
        both.insert("enterprise_registry".into(), report(2, &[("rating", 2)]));
        let warning = &warnings_for(&columns, "person", &both, 1, Audience::Bureau)[0];
        assert!(
            warning.contains("up to 6 groups")
                && warning.contains("`social_insurance.year`, `enterprise_registry.rating`"),
            "{warning}"
        );
    }
}
