//! How the command line prints for people: tables, JSON, meter records and pre-flight answers,
//! shared by the local commands, `veil client` and the demo.

use unicode_width::UnicodeWidthStr;
use veil_runtime::error::{Error, Result};
use veil_runtime::metering;

pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::internal(format!("encoding JSON output: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Prints meter records as a table.
pub(crate) fn print_meter(records: &[metering::MeterRecord]) {
    print!("{}", meter_table(records));
}

/// Formats meter records as a table.
pub(crate) fn meter_table(records: &[metering::MeterRecord]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|m| {
            vec![
                m.job_id.clone(),
                m.operator.clone(),
                m.end_state.to_string(),
                m.wall_ms.to_string(),
                m.cpu_ms.to_string(),
                m.rows_scanned.to_string(),
                m.bytes_scanned.to_string(),
                format!("{:.1}", m.peak_memory_bytes as f64 / (1024.0 * 1024.0)),
                format!("{}", m.micro_epsilon.epsilon()),
                m.output_rows.to_string(),
                m.output_bytes.to_string(),
                if m.fuel == 0 {
                    "-".to_string()
                } else {
                    format!("{:.2e}", m.fuel as f64)
                },
                m.price.to_string(),
            ]
        })
        .collect();
    format_table(
        &[
            "job",
            "operator",
            "end",
            "wall ms",
            "cpu ms",
            "rows scanned",
            "bytes scanned",
            "peak MiB",
            "ε",
            "out rows",
            "out bytes",
            "fuel",
            "price",
        ],
        &rows,
    )
}

/// Prints an aligned text table.
pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", format_table(headers, rows));
}

/// Formats an aligned text table. Columns are aligned by display width, so a cell of Chinese
/// text (two columns per character on a terminal) lines up with Latin text.
pub(crate) fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.width()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.width());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.width());
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "─".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

/// Prints a recall for the bureau, with the buyers it must tell.
pub(crate) fn print_recall(product_id: &str, reason: &str, buyers: &[String]) {
    println!("product {product_id} is recalled: {reason}");
    if buyers.is_empty() {
        println!("nobody bought it");
    } else {
        println!("tell these buyers:");
        for buyer in buyers {
            println!("  {buyer}");
        }
    }
}

/// Prints a pre-flight answer for people.
pub(crate) fn print_dry_run(answer: &veil_sdk::api::DryRun) {
    if answer.passes {
        println!("the job would pass every rule checked before data is read");
    } else {
        println!("the job would be refused:");
        for v in &answer.violations {
            println!("  - [{}] {}", v.rule, v.message);
        }
    }
    if let Some(job) = &answer.reuses_job {
        println!(
            "  identical to released job {job}: running it returns that product and costs nothing"
        );
        return;
    }
    if let Some(grant) = &answer.grant_id {
        println!("  grant:      {grant}");
    }
    // A refused job would not run: it costs nothing, so no cost is shown.
    if !answer.passes {
        return;
    }
    println!(
        "  cost:       ε {} δ {}, {}",
        answer.epsilon,
        answer.delta,
        veil_runtime::ids::Fen(answer.price_fen)
    );
    println!("  rows read:  {}", answer.rows_scanned);
    println!(
        "  budget {}: ε {} of {} spent; {} would remain",
        answer.budget_period,
        answer.epsilon_spent,
        answer.epsilon_per_period,
        answer.epsilon_remaining_after
    );
    print_accuracy(&answer.accuracy, &answer.warnings);
}

/// Prints each output column's stated error at 95 % and the warnings, for people.
pub(crate) fn print_accuracy(accuracy: &[veil_sdk::manifest::ColumnAccuracy], warnings: &[String]) {
    if !accuracy.is_empty() {
        println!("  accuracy at 95 % confidence (from the noise scales; no data read):");
        for column in accuracy {
            let at = column
                .at_units
                .map(|units| format!(" in a group of {units} units"))
                .unwrap_or_default();
            println!(
                "    {:<24} {:<8} ±{}{at} ({:.1} % of its span)",
                column.column,
                column.kind,
                show_error(column.error),
                column.share * 100.0
            );
        }
        for column in accuracy {
            if let Some(warning) = &column.warning {
                println!("  warning: {warning}");
            }
        }
    }
    for warning in warnings {
        println!("  warning: {warning}");
    }
}

/// An error figure without false precision.
fn show_error(value: f64) -> String {
    if value >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Chinese cell takes two terminal columns per character: the next column starts at the
    /// same display position on every line.
    #[test]
    fn tables_align_by_display_width() {
        let table = format_table(
            &["city", "persons"],
            &[
                vec!["太原".into(), "12".into()],
                vec!["Datong".into(), "7".into()],
            ],
        );
        let starts: Vec<usize> = table
            .lines()
            .filter(|line| !line.starts_with('─'))
            .map(|line| {
                let at = line.rfind("  ").expect("two columns") + 2;
                line[..at].width()
            })
            .collect();
        assert_eq!(starts, [8, 8, 8], "{table}");
    }
}
