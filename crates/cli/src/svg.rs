//! Plots as hand-written SVG (no plotting dependency): loss curves of several runs overlaid,
//! small-multiple line charts (e.g. a routing statistic of every layer over training) and
//! small-multiple bar histograms (e.g. the chosen-depth histogram of every layer).
//!
//! Inputs are plain structs; the caller parses metrics files and writes the returned string.

#![allow(dead_code)]

use std::fmt::Write;

/// One run's loss curves: (step, loss) points of the training and validation loss.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub label: String,
    pub train: Vec<(f64, f64)>,
    pub val: Vec<(f64, f64)>,
}

/// Colors of successive runs (color-blind friendly, Okabe–Ito).
const PALETTE: [&str; 8] =
    ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"];

/// A 12-px text label centred at (x, y), escaped.
fn centered_label(out: &mut String, x: f64, y: f64, text: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" font-size="12">{}</text>"#,
        escape(text)
    );
}

/// Escapes text for SVG content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A 1, 2 or 5 × 10^k step giving about `target` intervals over `span`.
fn nice_step(span: f64, target: usize) -> f64 {
    let raw = span / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let mantissa = raw / magnitude;
    let nice = if mantissa <= 1.0 {
        1.0
    } else if mantissa <= 2.0 {
        2.0
    } else if mantissa <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Axis range widened to whole ticks, and the ticks: (lo, hi, step, ticks).
fn axis(lo: f64, hi: f64, target: usize) -> (f64, f64, f64, Vec<f64>) {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 1.0, hi + 1.0) };
    let step = nice_step(hi - lo, target);
    let first = (lo / step).floor();
    let last = (hi / step).ceil();
    let ticks: Vec<f64> = (0..=(last - first) as i64).map(|i| (first + i as f64) * step).collect();
    (first * step, last * step, step, ticks)
}

/// A tick label with as many decimals as the step needs.
fn tick_label(value: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let text = format!("{value:.decimals$}");
    if text.starts_with('-') && text[1..].chars().all(|c| c == '0' || c == '.') {
        text[1..].to_string() // no "-0.0"
    } else {
        text
    }
}

/// A value for a tooltip: at most 4 decimals, trailing zeros trimmed.
fn short_number(value: f64) -> String {
    let text = format!("{value:.4}");
    let text =
        if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    text.to_string()
}

/// Plot area of a chart in pixels.
#[derive(Clone, Copy)]
struct Frame {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

/// Data-to-pixel mapping of one chart.
struct Scale {
    frame: Frame,
    x: (f64, f64),
    y: (f64, f64),
}

impl Scale {
    fn px(&self, x: f64) -> f64 {
        self.frame.left + (x - self.x.0) / (self.x.1 - self.x.0) * self.frame.width
    }
    fn py(&self, y: f64) -> f64 {
        self.frame.top + self.frame.height
            - (y - self.y.0) / (self.y.1 - self.y.0) * self.frame.height
    }
}

/// Axes, grid lines, tick labels and axis titles.
fn draw_axes(
    out: &mut String,
    scale: &Scale,
    x_ticks: Option<(&[f64], f64)>,
    y_ticks: (&[f64], f64),
    x_title: &str,
    y_title: &str,
) {
    let f = scale.frame;
    let (bottom, right) = (f.top + f.height, f.left + f.width);
    let (ticks, step) = y_ticks;
    for &tick in ticks {
        let y = scale.py(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#e5e5e5"/>"##,
            f.left
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"#,
            f.left - 6.0,
            y + 4.0,
            tick_label(tick, step)
        );
    }
    if let Some((ticks, step)) = x_ticks {
        for &tick in ticks {
            let x = scale.px(tick);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{bottom:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/>"##,
                bottom + 5.0
            );
            let _ = writeln!(
                out,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                bottom + 18.0,
                tick_label(tick, step)
            );
        }
    }
    let _ = writeln!(
        out,
        r##"<path d="M{:.1},{:.1} V{bottom:.1} H{right:.1}" fill="none" stroke="#333"/>"##,
        f.left, f.top
    );
    if !x_title.is_empty() {
        centered_label(out, f.left + f.width / 2.0, bottom + 36.0, x_title);
    }
    if !y_title.is_empty() {
        let (x, y) = (f.left - 48.0, f.top + f.height / 2.0);
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" font-size="12" transform="rotate(-90 {x:.1} {y:.1})">{}</text>"#,
            escape(y_title)
        );
    }
}

fn svg_open(out: &mut String, width: f64, height: f64) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
}

/// An SVG document opened with its title centered at height `title_y`.
fn titled_svg(width: f64, height: f64, title_y: f64, title: &str) -> String {
    let mut out = String::new();
    svg_open(&mut out, width, height);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{title_y}" text-anchor="middle" font-size="15">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    out
}

/// One legend entry: a color key and its label, the text baseline at `y`.
fn legend_entry(out: &mut String, x: f64, y: f64, color: &str, label: &str) {
    let _ = writeln!(
        out,
        r#"<rect x="{x:.1}" y="{:.1}" width="14" height="10" fill="{color}"/>"#,
        y - 9.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{y:.1}" font-size="12">{}</text>"#,
        x + 20.0,
        escape(label)
    );
}

fn finite_points(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite())
}

/// Loss curves of several runs on one chart: x = step, y = loss; training loss solid,
/// validation loss dashed with dots, one color per run, a legend on the right.
/// Non-finite points are skipped.
pub fn loss_curves_svg(series: &[Series]) -> String {
    let (width, height) = (820.0, 480.0);
    let frame = Frame { left: 72.0, top: 40.0, width: 540.0, height: 380.0 };
    let mut out = String::new();
    svg_open(&mut out, width, height);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="24" text-anchor="middle" font-size="15">Loss</text>"#,
        frame.left + frame.width / 2.0
    );
    let all: Vec<(f64, f64)> =
        series.iter().flat_map(|s| finite_points(&s.train).chain(finite_points(&s.val))).collect();
    if all.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="14">no data</text>"#,
            frame.left + frame.width / 2.0,
            frame.top + frame.height / 2.0
        );
        out.push_str("</svg>\n");
        return out;
    }
    let min_max = |values: &mut dyn Iterator<Item = f64>| {
        values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let (x_lo, x_hi) = min_max(&mut all.iter().map(|p| p.0));
    let (y_lo, y_hi) = min_max(&mut all.iter().map(|p| p.1));
    let (x0, x1, x_step, x_ticks) = axis(x_lo, x_hi, 8);
    let (y0, y1, y_step, y_ticks) = axis(y_lo, y_hi, 6);
    let scale = Scale { frame, x: (x0, x1), y: (y0, y1) };
    draw_axes(&mut out, &scale, Some((&x_ticks, x_step)), (&y_ticks, y_step), "step", "loss");
    let legend_x = frame.left + frame.width + 24.0;
    for (i, run) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        for (points, dashed) in [(&run.train, false), (&run.val, true)] {
            polyline(&mut out, &scale, points, color, dashed);
            if dashed {
                for (x, y) in finite_points(points) {
                    let _ = writeln!(
                        out,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                        scale.px(x),
                        scale.py(y)
                    );
                }
            }
        }
        legend_entry(&mut out, legend_x, frame.top + 10.0 + 20.0 * i as f64, color, &run.label);
    }
    // Line-style key below the run legend.
    let key_y = frame.top + 20.0 + 20.0 * series.len() as f64;
    for (j, (name, dash)) in
        [("train", ""), ("val", r#" stroke-dasharray="6 4""#)].iter().enumerate()
    {
        let y = key_y + 18.0 * j as f64;
        let _ = writeln!(
            out,
            r##"<line x1="{legend_x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#555" stroke-width="1.5"{dash}/>"##,
            y - 4.0,
            legend_x + 24.0,
            y - 4.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{y:.1}" font-size="12">{name}</text>"#,
            legend_x + 30.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// The finite points as one polyline (nothing when there are none); `dashed` for validation.
fn polyline(out: &mut String, scale: &Scale, points: &[(f64, f64)], color: &str, dashed: bool) {
    let coords: Vec<String> = finite_points(points)
        .map(|(x, y)| format!("{:.1},{:.1}", scale.px(x), scale.py(y)))
        .collect();
    if coords.is_empty() {
        return;
    }
    let dash = if dashed { r#" stroke-dasharray="6 4""# } else { "" };
    let _ = writeln!(
        out,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>"#,
        coords.join(" ")
    );
}

/// One panel of [`line_panels_svg`]: a title, the y-axis title, and labelled (x, y) lines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinePanel {
    pub title: String,
    pub y_title: String,
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

/// Line charts side by side under one title, x = step; line i has the same color (and legend
/// entry) in every panel. Non-finite points are skipped.
pub fn line_panels_svg(title: &str, panels: &[LinePanel]) -> String {
    let (panel_width, panel_height) = (420.0, 330.0);
    let width = panels.len().max(1) as f64 * panel_width + 140.0;
    let height = panel_height + 50.0;
    let mut out = titled_svg(width, height, 24.0, title);
    let all = |panel: &LinePanel| -> Vec<(f64, f64)> {
        panel.lines.iter().flat_map(|(_, points)| finite_points(points)).collect()
    };
    if panels.iter().all(|p| all(p).is_empty()) {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="14">no data</text>"#,
            width / 2.0,
            height / 2.0
        );
        out.push_str("</svg>\n");
        return out;
    }
    for (index, panel) in panels.iter().enumerate() {
        let left = 72.0 + index as f64 * panel_width;
        let frame = Frame { left, top: 60.0, width: panel_width - 110.0, height: 240.0 };
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="48" text-anchor="middle" font-size="12">{}</text>"#,
            frame.left + frame.width / 2.0,
            escape(&panel.title)
        );
        let points = all(panel);
        if points.is_empty() {
            continue;
        }
        let (x_lo, x_hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
        let (y_lo, y_hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        let (x0, x1, x_step, x_ticks) = axis(x_lo, x_hi, 5);
        let (y0, y1, y_step, y_ticks) = axis(y_lo.min(0.0), y_hi, 5);
        let scale = Scale { frame, x: (x0, x1), y: (y0, y1) };
        let ticks = (&x_ticks[..], x_step);
        draw_axes(&mut out, &scale, Some(ticks), (&y_ticks, y_step), "step", &panel.y_title);
        for (i, (_, points)) in panel.lines.iter().enumerate() {
            polyline(&mut out, &scale, points, PALETTE[i % PALETTE.len()], false);
        }
    }
    let legend_x = width - 120.0;
    let labels = panels.iter().max_by_key(|p| p.lines.len()).map_or(&[][..], |p| &p.lines[..]);
    for (i, (label, _)) in labels.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        legend_entry(&mut out, legend_x, 70.0 + 20.0 * i as f64, color, label);
    }
    out.push_str("</svg>\n");
    out
}

/// Small multiples of bar charts under one title: each panel is (panel title, [(category,
/// value)]), e.g. one panel per layer with the share of tokens per chosen loop count.
/// Non-finite or negative values draw as empty bars.
pub fn histograms_svg(title: &str, panels: &[(String, Vec<(String, f64)>)]) -> String {
    let columns = panels.len().clamp(1, 4);
    let rows = panels.len().div_ceil(columns).max(1);
    let (panel_width, panel_height) = (260.0, 210.0);
    let (width, height) = (columns as f64 * panel_width + 20.0, rows as f64 * panel_height + 50.0);
    let mut out = titled_svg(width, height, 26.0, title);
    if panels.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="14">no data</text>"#,
            width / 2.0,
            height / 2.0 + 10.0
        );
    }
    for (index, (panel_title, bars)) in panels.iter().enumerate() {
        let (column, row) = (index % columns, index / columns);
        let origin_x = 10.0 + column as f64 * panel_width;
        let origin_y = 40.0 + row as f64 * panel_height;
        let frame =
            Frame { left: origin_x + 56.0, top: origin_y + 28.0, width: 180.0, height: 140.0 };
        centered_label(&mut out, frame.left + frame.width / 2.0, origin_y + 16.0, panel_title);
        let value = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
        let max = bars.iter().map(|(_, v)| value(*v)).fold(0.0, f64::max);
        let (_, y1, y_step, y_ticks) = axis(0.0, if max > 0.0 { max } else { 1.0 }, 4);
        let scale = Scale { frame, x: (0.0, 1.0), y: (0.0, y1) };
        draw_axes(&mut out, &scale, None, (&y_ticks, y_step), "", "");
        let slot = frame.width / bars.len().max(1) as f64;
        for (i, (category, v)) in bars.iter().enumerate() {
            let bar_height = value(*v) / y1 * frame.height;
            let x = frame.left + slot * i as f64 + slot * 0.15;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bar_height:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                frame.top + frame.height - bar_height,
                slot * 0.7,
                PALETTE[0],
                escape(category),
                short_number(*v)
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                x + slot * 0.35,
                frame.top + frame.height + 14.0,
                escape(category)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that every element opened is closed in order (enough XML for our output).
    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').expect("unterminated tag") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "{tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_string());
            }
            // Text between tags must not hold raw markup characters.
            let text_end = rest[close + 1..].find('<').map_or(rest.len(), |i| i + close + 1);
            assert!(!rest[close + 1..text_end].contains('>'));
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
    }

    /// The numbers of every `attr="..."` in the elements named `element`.
    fn attribute_values(svg: &str, element: &str, attr: &str) -> Vec<String> {
        svg.lines()
            .filter(|l| l.starts_with(&format!("<{element} ")))
            .filter_map(|l| {
                let start = l.find(&format!(" {attr}=\""))? + attr.len() + 3;
                Some(l[start..start + l[start..].find('"')?].to_string())
            })
            .collect()
    }

    #[test]
    fn nice_ticks_cover_the_range() {
        assert_eq!(axis(0.0, 10.0, 5).3, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let (lo, hi, step, ticks) = axis(0.13, 0.87, 5);
        assert_eq!(step, 0.2);
        assert!(lo <= 0.13 && hi >= 0.87);
        assert_eq!(ticks.len(), 6);
        assert_eq!(tick_label(ticks[1], step), "0.2");
        for (lo, hi) in [(1.0, 1.0), (-3.5, 7.25), (2.05, 2.35), (0.0, 1e6), (123.0, 4567.0)] {
            let (a, b, step, ticks) = axis(lo, hi, 6);
            assert!(a <= lo && b >= hi && b > a);
            assert!((2..=14).contains(&ticks.len()), "{lo} {hi} {ticks:?}");
            for pair in ticks.windows(2) {
                assert!((pair[1] - pair[0] - step).abs() < step * 1e-9);
            }
        }
        assert_eq!(tick_label(-0.0001, 0.5), "0.0");
        assert_eq!(tick_label(2000.0, 500.0), "2000");
        assert_eq!(short_number(0.1 + 0.2), "0.3");
        assert_eq!(short_number(1200.0), "1200");
    }

    #[test]
    fn loss_curves_draw_every_run_and_point() {
        let runs = vec![
            Series {
                label: "dense <d=128> & co".into(),
                train: (0..50).map(|s| (s as f64 * 10.0, 5.0 / (1.0 + s as f64))).collect(),
                val: vec![(0.0, 5.1), (250.0, 1.0), (490.0, 0.5)],
            },
            Series {
                label: "versatile".into(),
                train: vec![(0.0, 5.5), (100.0, f64::NAN), (200.0, 2.0), (490.0, 0.4)],
                val: vec![],
            },
        ];
        let svg = loss_curves_svg(&runs);
        assert_well_formed(&svg);
        assert!(svg.contains("dense &lt;d=128&gt; &amp; co"));
        assert!(svg.contains(">versatile<"));
        let polylines = attribute_values(&svg, "polyline", "points");
        assert_eq!(polylines.len(), 3, "two train curves and one val curve");
        let counts: Vec<usize> = polylines.iter().map(|p| p.split(' ').count()).collect();
        assert_eq!(counts, vec![50, 3, 3], "the NaN point is skipped");
        assert_eq!(attribute_values(&svg, "circle", "cx").len(), 3);
        // Every point lies inside the plot frame.
        for points in &polylines {
            for pair in points.split(' ') {
                let (x, y) = pair.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((72.0..=612.0).contains(&x) && (40.0..=420.0).contains(&y), "{x},{y}");
            }
        }
        // The lowest loss sits lowest on the chart (largest y).
        let first_run: Vec<(f64, f64)> = polylines[0]
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert!(first_run.windows(2).all(|w| w[1].0 > w[0].0 && w[1].1 >= w[0].1));
        // The x axis ends at the last step or just past it.
        assert!(svg.contains(">500<") || svg.contains(">490<"));
    }

    #[test]
    fn line_panels_draw_every_line_inside_its_panel() {
        let line = |scale: f64| -> Vec<(f64, f64)> {
            (1..=20).map(|s| (s as f64 * 10.0, scale * s as f64 / 20.0)).collect()
        };
        let panels = vec![
            LinePanel {
                title: "agreement".into(),
                y_title: "share".into(),
                lines: vec![("layer 0".into(), line(1.0)), ("layer 1".into(), line(0.5))],
            },
            LinePanel {
                title: "margin".into(),
                y_title: "logit".into(),
                lines: vec![
                    ("layer 0".into(), line(3.0)),
                    ("layer 1".into(), vec![(5.0, f64::NAN)]),
                ],
            },
        ];
        let svg = line_panels_svg("Depth router <during training>", &panels);
        assert_well_formed(&svg);
        assert!(svg.contains("Depth router &lt;during training&gt;"));
        let polylines = attribute_values(&svg, "polyline", "points");
        assert_eq!(polylines.len(), 3, "the all-NaN line draws nothing");
        for (i, points) in polylines.iter().enumerate() {
            let (lo, hi) = if i < 2 { (72.0, 382.0) } else { (492.0, 802.0) };
            for pair in points.split(' ') {
                let (x, y) = pair.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((lo..=hi).contains(&x) && (60.0..=300.0).contains(&y), "{i}: {x},{y}");
            }
        }
        assert_eq!(attribute_values(&svg, "rect", "fill").len(), 3, "background + 2 legend keys");
    }

    #[test]
    fn empty_charts_are_valid() {
        for svg in [
            loss_curves_svg(&[]),
            loss_curves_svg(&[Series { label: "x".into(), ..Default::default() }]),
            histograms_svg("depths", &[]),
            line_panels_svg("routing", &[LinePanel::default()]),
        ] {
            assert_well_formed(&svg);
            assert!(svg.contains("no data"));
        }
    }

    #[test]
    fn histograms_scale_bars_to_their_panel() {
        let panels: Vec<(String, Vec<(String, f64)>)> = (0..6)
            .map(|layer| {
                let bars = (1..=4).map(|d| (format!("{d}"), (d * (layer + 1)) as f64)).collect();
                (format!("layer {layer}"), bars)
            })
            .collect();
        let mut with_bad = panels.clone();
        with_bad[0].1[0].1 = f64::NAN;
        with_bad[0].1[1].1 = -3.0;
        for (panels, bad) in [(panels, false), (with_bad, true)] {
            let svg = histograms_svg("Chosen depth per layer", &panels);
            assert_well_formed(&svg);
            let heights: Vec<f64> = attribute_values(&svg, "rect", "height")
                .iter()
                .skip(1) // the background
                .map(|h| h.parse().unwrap())
                .collect();
            assert_eq!(heights.len(), 24);
            // Within a panel bars grow with the value: 1:2:3:4.
            for panel in heights.chunks(4).skip(usize::from(bad)) {
                for (i, h) in panel.iter().enumerate() {
                    assert!((h / panel[0] - (i + 1) as f64).abs() < 0.02, "{panel:?}");
                }
                assert!(panel[3] <= 140.0 + 1e-9 && panel[3] > 70.0);
            }
            if bad {
                assert_eq!(&heights[..2], &[0.0, 0.0]);
            }
            assert!(svg.contains(">layer 5<"));
            assert!(svg.contains(r#"width="1060""#), "4 columns");
        }
    }
}
