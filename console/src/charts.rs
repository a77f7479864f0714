//! Bar charts as SVG, drawn with `plotters`, for pages to put inline.
//!
//! The console's Content-Security-Policy allows no inline style, so a chart must be plain
//! SVG with presentation attributes (`fill=`, `stroke=`): `plotters`' SVG backend writes
//! exactly that, and escapes every text it writes (`<`, `>`, `&`, quotes), so a label an
//! operator chose — a dataset or principal name — renders as text. There is no font
//! feature: `plotters` estimates text widths crudely and the browser draws the text with its
//! own fonts, Chinese included. [`bars`] checks its output once more before a page gets it.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The height of every chart, in pixels.
const HEIGHT_PX: u32 = 300;
/// The narrowest a chart is drawn, in pixels.
const WIDTH_MIN_PX: u32 = 560;
/// The widest a chart is drawn, in pixels (the page scales it down on a small screen).
const WIDTH_MAX_PX: u32 = 1160;
/// Room for each bar with its label, in pixels, before the chart is at its widest.
const BAR_SLOT_PX: u32 = 72;
/// Room for the y axis and margins, in pixels.
const FRAME_PX: u32 = 120;
/// About how wide a character of a label is, in pixels: a narrow (ASCII) one and a wide
/// (CJK) one, at the labels' size.
const NARROW_CHAR_PX: u32 = 7;
const WIDE_CHAR_PX: u32 = 13;
/// Room kept between two labels, in pixels.
const LABEL_GAP_PX: u32 = 8;
/// The fewest characters (its ellipsis included) a label keeps when it is shortened.
const LABEL_CHARS_MIN: usize = 4;
/// The fewest bar widths the x axis spans: one or two bars are not stretched across it.
const SLOTS_MIN: usize = 4;
/// How far below the axis a bar's label starts, in pixels.
const LABEL_OFFSET_PX: i32 = 8;
/// Headroom above the tallest bar or the reference line, as a share of it.
const HEADROOM: f64 = 0.1;

/// The bars' colour, and the colour of a bar above the reference (over the allowance).
const BAR: RGBColor = RGBColor(11, 92, 173);
const OVER: RGBColor = RGBColor(179, 38, 30);
const REFERENCE: RGBColor = RGBColor(28, 124, 60);

/// A bar chart: one bar per label with its value, the y axis in `unit`, and, with
/// `reference`, a horizontal line at that value (an allowance; bars above it are drawn in
/// red). Returns an SVG document to put inline in a page. Labels and values pair up in
/// order; extra ones of either are left out, and a value that is not finite counts as 0.
pub fn bars(
    title: &str,
    labels: &[String],
    values: &[f64],
    unit: &str,
    reference: Option<f64>,
) -> String {
    let n = labels.len().min(values.len());
    let values: Vec<f64> = values[..n]
        .iter()
        .map(|v| if v.is_finite() { *v } else { 0.0 })
        .collect();
    let reference = reference.filter(|r| r.is_finite());
    let n_px = u32::try_from(n).unwrap_or(u32::MAX);
    let width = FRAME_PX
        .saturating_add(BAR_SLOT_PX.saturating_mul(n_px))
        .clamp(WIDTH_MIN_PX, WIDTH_MAX_PX);
    let slot_px = (width - FRAME_PX) / n_px.max(SLOTS_MIN as u32);
    // A lone bar's label may use the empty slots beside it.
    let slots = if n == 1 { SLOTS_MIN as u32 } else { 1 };
    let room_px = (slot_px * slots).saturating_sub(LABEL_GAP_PX);
    let shown: Vec<String> = labels[..n].iter().map(|l| shorten(l, room_px)).collect();

    let mut svg = String::new();
    // A drawing error can only come from the backend writing into a string, which does not
    // fail; should it, the page gets a chart that says so rather than a broken one.
    if draw(
        &mut svg,
        (width, HEIGHT_PX),
        title,
        &shown,
        &values,
        unit,
        reference,
    )
    .is_err()
    {
        svg = String::new();
        let _ = draw_message(&mut svg, title, "the chart could not be drawn");
    }
    finish(svg, title)
}

#[allow(clippy::too_many_arguments)]
fn draw(
    svg: &mut String,
    size: (u32, u32),
    title: &str,
    labels: &[String],
    values: &[f64],
    unit: &str,
    reference: Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    if values.is_empty() {
        return draw_message(svg, title, "nothing to show yet");
    }
    let n = values.len();
    let top = values
        .iter()
        .copied()
        .chain(reference)
        .fold(0.0_f64, f64::max);
    let bottom = values.iter().copied().fold(0.0_f64, f64::min);
    let span = if top - bottom > 0.0 {
        top - bottom
    } else {
        1.0
    };
    let (lo, hi) = (
        if bottom < 0.0 {
            bottom - span * HEADROOM
        } else {
            0.0
        },
        if top > 0.0 || bottom == 0.0 {
            top + span * HEADROOM
        } else {
            0.0
        },
    );
    let hi = if hi > lo { hi } else { lo + 1.0 };

    let pad = SLOTS_MIN.saturating_sub(n) as f64 / 2.0;

    let root = SVGBackend::with_string(svg, size).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(if reference.is_some() { 52 } else { 34 })
        .y_label_area_size(64)
        // Bar i spans [i, i + 1): a plain range, because plotters' segmented integer range
        // cannot hold a single bar. Fewer bars than SLOTS_MIN are centred, not stretched.
        .build_cartesian_2d(-pad..n as f64 + pad, lo..hi)?;
    // The reference line is named under the x axis, where no bar can cover the words.
    let x_desc = reference
        .map(|r| format!("green line: allowance 额度 {} {unit}", number(r)))
        .unwrap_or_default();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(RGBColor(221, 227, 233))
        .light_line_style(TRANSPARENT)
        .x_labels(0)
        .y_label_style(("sans-serif", 12))
        .y_desc(unit)
        .x_desc(x_desc)
        .axis_desc_style(("sans-serif", 13))
        .draw()?;
    chart.draw_series(values.iter().enumerate().map(|(i, v)| {
        let over = reference.is_some_and(|r| *v > r);
        let x = i as f64;
        let mut bar = Rectangle::new(
            [(x, 0.0), (x + 1.0, *v)],
            if over { OVER } else { BAR }.filled(),
        );
        bar.set_margin(0, 0, 8, 8);
        bar
    }))?;
    // Each label sits under the middle of its bar, just below the axis.
    let label_style = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    chart.draw_series(labels.iter().enumerate().map(|(i, label)| {
        EmptyElement::at((i as f64 + 0.5, lo))
            + Text::new(label.clone(), (0, LABEL_OFFSET_PX), label_style.clone())
    }))?;
    if let Some(r) = reference {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(-pad, r), (n as f64 + pad, r)],
            REFERENCE.stroke_width(2),
        )))?;
    }
    root.present()?;
    Ok(())
}

/// A chart frame with a title and one sentence instead of bars.
fn draw_message(
    svg: &mut String,
    title: &str,
    message: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (WIDTH_MIN_PX, HEIGHT_PX / 2)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 17))?;
    let (w, h) = root.dim_in_pixel();
    root.draw(&Text::new(
        message.to_string(),
        (
            i32::try_from(w / 2).unwrap_or(0),
            i32::try_from(h / 3).unwrap_or(0),
        ),
        ("sans-serif", 14)
            .into_font()
            .color(&RGBColor(91, 107, 124))
            .pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    root.present()?;
    Ok(())
}

/// Names the chart for screen readers, and makes sure nothing in it can run or carry a
/// style the page's policy would refuse: `plotters` writes neither, and a future version
/// that did would make the chart a sentence rather than break the policy. (Text inside the
/// chart is escaped, quotes included, so ` style="` and `<script` can only be markup.)
fn finish(svg: String, title: &str) -> String {
    let lower = svg.to_ascii_lowercase();
    let safe = svg.starts_with("<svg ")
        && !lower.contains("<script")
        && !lower.contains(" style=\"")
        && !lower.contains("<style")
        && !lower.contains("<foreignobject");
    if !safe {
        return format!(
            "<p class=\"note\">{} — the chart could not be shown.</p>",
            escape(title)
        );
    }
    format!(
        "<svg role=\"img\" aria-label=\"{}\" {}",
        escape(title),
        &svg["<svg ".len()..]
    )
}

/// Text for an XML attribute or element.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            other => out.push(other),
        }
    }
    out
}

/// About how wide a character is drawn, in pixels.
fn char_px(c: char) -> u32 {
    if c.is_ascii() {
        NARROW_CHAR_PX
    } else {
        WIDE_CHAR_PX
    }
}

/// A label cut to fit in about `room_px` pixels (keeping at least [`LABEL_CHARS_MIN`]
/// characters), with an ellipsis when cut.
fn shorten(label: &str, room_px: u32) -> String {
    if label.chars().map(char_px).sum::<u32>() <= room_px {
        return label.to_string();
    }
    let mut out = String::new();
    let mut used = WIDE_CHAR_PX;
    for (i, c) in label.chars().enumerate() {
        used += char_px(c);
        if used > room_px && i >= LABEL_CHARS_MIN - 1 {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// A number as a reader writes it: at most three decimals, no trailing zeros.
fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_text_and_nothing_runs_or_carries_a_style() {
        let svg = bars(
            "预算 <b>",
            &[
                "市统计局".to_string(),
                "<script>alert(1)</script>".to_string(),
            ],
            &[1.5, 0.25],
            "ε",
            Some(1.0),
        );
        assert!(svg.starts_with("<svg role=\"img\" aria-label=\"预算 &lt;b&gt;\""));
        assert!(
            svg.contains("市统计局"),
            "the Chinese label is drawn: {svg}"
        );
        assert!(
            svg.contains("&lt;script"),
            "the script label is drawn as text: {svg}"
        );
        assert!(!svg.to_ascii_lowercase().contains("<script"));
        assert!(!svg.contains("style="));
        assert!(svg.contains("green line: allowance 额度 1 ε"));
        // The bar over the allowance is red, the other is not.
        assert!(svg.contains("fill=\"#B3261E\""), "{svg}");
        assert!(svg.contains("fill=\"#0B5CAD\""), "{svg}");
    }

    #[test]
    fn an_empty_chart_says_so() {
        let svg = bars("收入", &[], &[], "¥", None);
        assert!(svg.contains("nothing to show yet"));
        assert!(svg.starts_with("<svg role=\"img\""));
    }

    #[test]
    fn negative_and_odd_values_still_draw() {
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let svg = bars("net", &labels, &[-3.0, f64::NAN, 2.0], "¥", None);
        assert!(svg.contains("<rect"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn long_labels_are_shortened() {
        assert_eq!(shorten("2026-07", 64), "2026-07");
        assert_eq!(shorten("数据集", 64), "数据集");
        assert_eq!(shorten("abcdefghijklmnop", 64), "abcdefg…");
        assert_eq!(shorten("城市规划研究院有限公司", 64), "城市规…");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(2.0), "2");
    }
}
