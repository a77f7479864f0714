//! What a release's users may expect of its figures: the accuracy stated before any ε is
//! spent, and each released cell's interval.
//!
//! Both come from the noise scales alone (see `noise::Draw::half_width`, OpenDP's accuracy
//! functions), never from a true value, so stating them costs no privacy: the width of an
//! interval is fixed by the ε plan, and its position is the noisy value.
//!
//! # Intervals
//! - A count or a sum: `[v − a, v + a]` with `a` the draw's half-width at α. A count's low end
//!   is raised to 0 (no count is negative), as is a sum's over a column whose bounds are not
//!   negative: post-processing, which only removes values the truth cannot take.
//! - An average is `m + s / c`: the bounds' midpoint `m` plus a noisy sum `s` of the values'
//!   offsets from it over a noisy count `c` (see `release::plan_noise`). With probability at
//!   least 1 − α both noises stay within their half-widths at α/2 (a union bound), so the true
//!   offset sum lies in `[s − a_s, s + a_s]` and the true count in `[c − a_c, c + a_c]` (and is
//!   at least 1). The quotient of a number in the first interval by one in the second is
//!   monotone in each, so its extremes are at the corners; the interval is `m` plus their
//!   range, cut to the column's bounds (the true average lies within them). It is
//!   conservative: its coverage is above 1 − α.
//!
//! # Stated accuracy
//! Before a run (at approval and at pre-flight) each output column states its half-width at
//! 95 %: counts and sums for every cell; averages for the smallest group the release can show
//! (k units), `(a_s + H · a_c) / (k − a_c)` with `H` the bounds' half-width (the largest an
//! offset from the midpoint can be), the widest the interval above can be there. A warning is raised when that is more than [`USABLE_SHARE`]
//! of what the column can span in such a group.

use veil_sdk::manifest::ColumnAccuracy;

/// The confidence of every stated interval.
pub const CONFIDENCE: f64 = 0.95;
/// Its significance, 1 − [`CONFIDENCE`].
pub const ALPHA: f64 = 0.05;
/// Above this share of what a column can span in the smallest releasable group (the bounds'
/// width for an average, k × the width for a sum, k for a count), a stated error comes with a
/// warning: the figures of small groups would be mostly noise.
pub const USABLE_SHARE: f64 = 0.25;

/// What a measure is, for the statement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Count,
    Sum { lo: f64, hi: f64 },
    Average { lo: f64, hi: f64 },
}

/// The width a column's values can span: the bounds' width, or the largest magnitude when
/// the bounds are one point.
fn width(lo: f64, hi: f64) -> f64 {
    let width = hi - lo;
    if width > 0.0 {
        width
    } else {
        lo.abs().max(hi.abs()).max(1.0)
    }
}

/// The half-width of an average's interval in a group of `units` units, from its sum's and
/// count's half-widths at α/2 each; the bounds' width when the count's noise could reach the
/// group's size.
pub(crate) fn average_error(sum: f64, count: f64, lo: f64, hi: f64, units: f64) -> f64 {
    let (_, half) = midpoint(lo, hi, false);
    let span = width(lo, hi);
    if units > count {
        ((sum + half * count) / (units - count)).min(span)
    } else {
        span
    }
}

/// The point an average's values are summed as offsets from, and the largest offset: the
/// middle of the bounds (rounded down for an integer column, whose sum stays an integer), so
/// that one unit's offset sum, and the noise calibrated to it, is at most half the bounds'
/// width per row instead of their largest magnitude.
pub(crate) fn midpoint(lo: f64, hi: f64, integer: bool) -> (f64, f64) {
    let middle = (lo + hi) / 2.0;
    let middle = if integer { middle.floor() } else { middle };
    (middle, (hi - middle).max(middle - lo).max(0.0))
}

/// The interval of an average `m + s / c` from its noisy offset sum `s` and count `c`, their
/// half-widths and the midpoint `m`.
pub(crate) fn average_interval(
    m: f64,
    s: f64,
    a_s: f64,
    c: f64,
    a_c: f64,
    lo: f64,
    hi: f64,
) -> (f64, f64) {
    let n_low = (c - a_c).max(1.0);
    let n_high = (c + a_c).max(n_low);
    let corners = [
        (s - a_s) / n_low,
        (s - a_s) / n_high,
        (s + a_s) / n_low,
        (s + a_s) / n_high,
    ];
    let low = m + corners.iter().copied().fold(f64::INFINITY, f64::min);
    let high = m + corners.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (low.clamp(lo, hi), high.clamp(lo, hi))
}

/// One column's statement: its error at 95 %, the share of what it can span, and a warning
/// when the share is above [`USABLE_SHARE`].
pub(crate) fn statement(
    column: &str,
    kind: Kind,
    error: f64,
    k: u32,
    epsilon: f64,
) -> ColumnAccuracy {
    let k_f = f64::from(k.max(1));
    let (kind_name, share, at_units, span_words) = match kind {
        Kind::Count => ("count", error / k_f, None, format!("k = {k} units")),
        Kind::Sum { lo, hi } => (
            "sum",
            error / (k_f * width(lo, hi)),
            None,
            format!("what {k} units can add up to within the bounds [{lo}, {hi}]"),
        ),
        Kind::Average { lo, hi } => (
            "average",
            error / width(lo, hi),
            Some(u64::from(k)),
            format!("the bounds [{lo}, {hi}]"),
        ),
    };
    let shown = show(error);
    let warning = (share > USABLE_SHARE).then(|| {
        let where_ = match kind {
            Kind::Average { .. } => format!(" in a group of {k} units"),
            _ => String::new(),
        };
        format!(
            "at ε = {epsilon}, `{column}` is within ±{shown}{where_} only at 95 % confidence: {:.0} % of {span_words}, more than the {:.0} % the platform calls usable. A larger ε, a larger k, narrower bounds, fewer aggregates or coarser groups lower it",
            share * 100.0,
            USABLE_SHARE * 100.0,
        )
    });
    ColumnAccuracy {
        column: column.to_string(),
        kind: kind_name.to_string(),
        confidence: CONFIDENCE,
        error,
        at_units,
        share,
        warning,
    }
}

/// A number for a message, without false precision.
fn show(value: f64) -> String {
    if value >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_average_interval_holds_every_quotient_of_the_box() {
        let (low, high) = average_interval(0.0, 1000.0, 100.0, 10.0, 2.0, 0.0, 1000.0);
        // True sum in [900, 1100], true count in [8, 12].
        assert!((low - 75.0).abs() < 1e-9, "{low}");
        assert!((high - 137.5).abs() < 1e-9, "{high}");
        // True sum in [100, 1900], true count in [1, 5]: cut to the bounds above.
        let (low, high) = average_interval(0.0, 1000.0, 900.0, 3.0, 2.0, 0.0, 1000.0);
        assert_eq!((low, high), (20.0, 1000.0));
        // Offsets from a midpoint of 500: the same quotients, moved by it.
        let (low, high) = average_interval(500.0, -250.0, 50.0, 10.0, 2.0, 0.0, 1000.0);
        assert!((low - (500.0 - 300.0 / 8.0)).abs() < 1e-9, "{low}");
        assert!((high - (500.0 - 200.0 / 12.0)).abs() < 1e-9, "{high}");
    }

    #[test]
    fn an_error_above_a_quarter_of_the_span_warns_and_names_the_column() {
        let usable = statement("income", Kind::Average { lo: 0.0, hi: 100.0 }, 5.0, 10, 1.0);
        assert!(usable.warning.is_none());
        assert_eq!(usable.at_units, Some(10));
        let poor = statement(
            "income",
            Kind::Average { lo: 0.0, hi: 100.0 },
            40.0,
            10,
            0.5,
        );
        let warning = poor.warning.unwrap_or_default();
        assert!(
            warning.contains("`income`") && warning.contains("40 %"),
            "{warning}"
        );
        assert!(warning.contains("ε = 0.5"), "{warning}");
        // A count is measured against k.
        let count = statement("persons", Kind::Count, 3.0, 10, 1.0);
        assert!(count.warning.is_some());
        assert!((count.share - 0.3).abs() < 1e-12);
    }

    #[test]
    fn an_average_whose_count_noise_reaches_the_group_size_spans_its_bounds() {
        assert_eq!(average_error(10.0, 12.0, 0.0, 50.0, 10.0), 50.0);
        // Offsets from the midpoint 25 are at most 25.
        let error = average_error(10.0, 2.0, 0.0, 50.0, 10.0);
        assert!((error - 60.0 / 8.0).abs() < 1e-12, "{error}");
    }
}
