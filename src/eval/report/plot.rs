//! The few-shot plot (`shots.svg`, `shots.png`): accuracy against labelled images per class,
//! zero-shot as horizontal lines, drawn with plotters' SVG backend and rasterised with resvg,
//! both with the DejaVu Sans font embedded in the binary.

use std::sync::{Arc, Once};

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::*;

/// The embedded font, used both to lay out the SVG and to render the PNG.
pub(crate) static FONT_BYTES: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");
/// The font's family name, as written into the SVG and as fontdb knows it.
pub(crate) const FONT: &str = "DejaVu Sans";
/// SVG size in pixels.
pub(crate) const WIDTH: u32 = 960;
pub(crate) const HEIGHT: u32 = 540;
/// The PNG is rendered at this multiple of the SVG size.
pub(crate) const PNG_SCALE: f32 = 1.5;
/// Width of the legend column to the right of the chart.
pub(crate) const LEGEND_WIDTH: u32 = 270;

/// Colours of the shot-based lines (Tableau 10: blue, orange, green, purple, cyan, olive).
pub(crate) const LINE_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
];
/// Colours of the zero-shot lines (red, grey, brown, pink).
pub(crate) const ZERO_SHOT_COLORS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(90, 90, 90),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Cannot fail for the embedded font; if it did, drawing text reports the error.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// One curve of the plot: a method's runs at several shot counts.
pub(crate) struct Curve {
    name: String,
    /// (examples per class, mean top-1 %, std %), sorted by x.
    points: Vec<(f64, f64, f64)>,
}

/// The horizontal zero-shot lines and the shot-based curves.
pub(crate) fn plot_series(f: &ResultsFile) -> (Vec<(String, f64)>, Vec<Curve>) {
    let all_x = f.mean_train_per_class.max(1.0);
    let mut flat = Vec::new();
    let mut curves: Vec<Curve> = Vec::new();
    for (s, run) in f.summary.iter().zip(&f.results.runs) {
        if run.is_zero_shot() {
            flat.push((s.method.clone(), s.top1_pct.mean));
            continue;
        }
        let x = run.shots.map_or(all_x, |k| k.max(1) as f64);
        let point = (x, s.top1_pct.mean, s.top1_pct.std);
        match curves.iter_mut().find(|c| c.name == s.method) {
            Some(c) => c.points.push(point),
            None => curves.push(Curve {
                name: s.method.clone(),
                points: vec![point],
            }),
        }
    }
    for c in &mut curves {
        c.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    (flat, curves)
}

/// The x-axis key points (in log2 units) and their labels.
pub(crate) fn x_ticks(f: &ResultsFile, curves: &[Curve]) -> Vec<(f64, String)> {
    let xs: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .collect();
    let has_all = f
        .results
        .runs
        .iter()
        .any(|r| !r.is_zero_shot() && r.shots.is_none());
    let all_x = f.mean_train_per_class.max(1.0);
    let max_shot = f
        .results
        .runs
        .iter()
        .filter(|r| !r.is_zero_shot())
        .filter_map(|r| r.shots)
        .max()
        .unwrap_or(if xs.is_empty() { 16 } else { 1 })
        .max(1);
    let mut ticks = Vec::new();
    let mut k = 1usize;
    while k <= max_shot {
        let near_all = has_all && {
            let ratio = all_x / k as f64;
            (1.0 / 1.3..1.3).contains(&ratio)
        };
        if !near_all {
            ticks.push(((k as f64).log2(), k.to_string()));
        }
        k *= 2;
    }
    if has_all {
        let label = if (all_x - all_x.round()).abs() < 1e-9 {
            format!("all ({})", all_x.round())
        } else {
            format!("all (≈{all_x:.1})")
        };
        ticks.push((all_x.log2(), label));
    }
    ticks.sort_by(|a, b| a.0.total_cmp(&b.0));
    ticks
}

/// Draws the few-shot plot as SVG text.
pub(crate) fn plot_svg(f: &ResultsFile) -> Result<String, String> {
    register_font();
    let mut svg = String::new();
    draw(f, &mut svg).map_err(|e| e.to_string())?;
    // Name the font's generic family too, for viewers without DejaVu Sans.
    Ok(svg.replace(
        &format!("font-family=\"{FONT}\""),
        &format!("font-family=\"{FONT}, sans-serif\""),
    ))
}

pub(crate) fn draw(f: &ResultsFile, svg: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let (flat, curves) = plot_series(f);
    let ticks = x_ticks(f, &curves);

    // Axis ranges: log2(shots) across, top-1 % up, with margins, rounded to tens.
    let tick_x: Vec<f64> = ticks.iter().map(|t| t.0).collect();
    let x_lo = tick_x.iter().copied().fold(0.0f64, f64::min) - 0.35;
    let x_hi = tick_x.iter().copied().fold(0.0f64, f64::max) + 0.35;
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for &(_, y) in &flat {
        lo = lo.min(y);
        hi = hi.max(y);
    }
    for c in &curves {
        for &(_, y, s) in &c.points {
            lo = lo.min(y - s);
            hi = hi.max(y + s);
        }
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 100.0);
    }
    let mut y_lo = ((lo - 3.0) / 10.0).floor().max(0.0) * 10.0;
    let mut y_hi = ((hi + 3.0) / 10.0).ceil().min(10.0) * 10.0;
    if y_hi - y_lo < 20.0 {
        if y_hi >= 100.0 {
            y_lo = (y_hi - 20.0).max(0.0);
        } else {
            y_hi = (y_lo + 20.0).min(100.0);
        }
    }

    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (chart_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);

    let text = |size: f64| TextStyle::from((FONT, size).into_font()).color(&BLACK);
    let grey = RGBColor(100, 100, 100);
    let n_test = f.results.n_test;
    let title = format!(
        "Top-1 accuracy on {} test image{}, {} classes",
        n_test,
        if n_test == 1 { "" } else { "s" },
        f.results.classes.len()
    );
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(title, text(19.0))
        .margin_top(12)
        .margin_left(12)
        .margin_right(16)
        .margin_bottom(8)
        .x_label_area_size(50)
        .y_label_area_size(58)
        .build_cartesian_2d(
            x_lo..x_hi,
            // A hair above the top so that the top grid line and label are drawn.
            (y_lo..y_hi + 1e-9).step(if y_hi - y_lo > 50.0 { 10.0 } else { 5.0 }),
        )?;
    let y_label = |v: &f64| format!("{v:.0}");
    let axis_grey = RGBColor(120, 120, 120);
    let grid_grey = RGBColor(225, 225, 225);
    // plotters cannot place x labels at chosen points of a plain range, so the x grid lines,
    // tick marks and labels (powers of two and "all") are drawn below by hand.
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&y_label)
        .x_desc("Labelled training examples per class (log scale)")
        .y_desc("Top-1 accuracy (%)")
        .label_style(text(14.0).color(&RGBColor(40, 40, 40)))
        .axis_desc_style(text(15.0))
        .bold_line_style(grid_grey)
        .light_line_style(TRANSPARENT)
        .axis_style(axis_grey)
        .draw()?;
    for (x, label) in &ticks {
        chart.draw_series(std::iter::once(PathElement::new(
            [(*x, y_lo), (*x, y_hi)],
            grid_grey,
        )))?;
        let (px, py) = chart.backend_coord(&(*x, y_lo));
        root.draw(&PathElement::new([(px, py), (px, py + 5)], axis_grey))?;
        root.draw(&Text::new(
            label.clone(),
            (px, py + 8),
            text(14.0)
                .color(&RGBColor(40, 40, 40))
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }

    // Zero-shot: dashed horizontal lines across the whole chart.
    for (k, &(_, y)) in flat.iter().enumerate() {
        let color = ZERO_SHOT_COLORS[k % ZERO_SHOT_COLORS.len()];
        chart.draw_series(DashedLineSeries::new(
            [(x_lo, y), (x_hi, y)],
            9,
            6,
            color.stroke_width(2),
        ))?;
    }
    // Shot-based methods: a band of ± one std, the mean line, error bars and markers.
    for (k, c) in curves.iter().enumerate() {
        let color = LINE_COLORS[k % LINE_COLORS.len()];
        let pts: Vec<(f64, f64, f64)> = c.points.iter().map(|p| (p.0.log2(), p.1, p.2)).collect();
        if pts.len() > 1 && pts.iter().any(|p| p.2 > 0.0) {
            let band: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| (p.0, (p.1 + p.2).min(y_hi)))
                .chain(pts.iter().rev().map(|p| (p.0, (p.1 - p.2).max(y_lo))))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(
                band,
                color.mix(0.14).filled(),
            )))?;
        }
        chart.draw_series(LineSeries::new(
            pts.iter().map(|p| (p.0, p.1)),
            color.stroke_width(2),
        ))?;
        for p in pts.iter().filter(|p| p.2 > 0.0) {
            let (px, y0) = chart.backend_coord(&(p.0, (p.1 - p.2).max(y_lo)));
            let (_, y1) = chart.backend_coord(&(p.0, (p.1 + p.2).min(y_hi)));
            let bar = color.stroke_width(1);
            root.draw(&PathElement::new([(px, y0), (px, y1)], bar))?;
            for y in [y0, y1] {
                root.draw(&PathElement::new([(px - 4, y), (px + 4, y)], bar))?;
            }
        }
        chart.draw_series(
            pts.iter()
                .map(|p| Circle::new((p.0, p.1), 4, color.filled())),
        )?;
    }
    drop(chart);

    // The legend, in its own column so that it never hides a line.
    let mut y = 52;
    let entry_h = 26;
    let x0 = 6;
    legend_area.draw(&Text::new("Method", (x0, y - 24), text(15.0)))?;
    for (k, c) in curves.iter().enumerate() {
        let color = LINE_COLORS[k % LINE_COLORS.len()];
        legend_area.draw(&PathElement::new(
            [(x0, y), (x0 + 34, y)],
            color.stroke_width(2),
        ))?;
        legend_area.draw(&Circle::new((x0 + 17, y), 4, color.filled()))?;
        legend_area.draw(&Text::new(
            truncate(&c.name, 26),
            (x0 + 44, y),
            text(14.0).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        y += entry_h;
    }
    for (k, (name, acc)) in flat.iter().enumerate() {
        let color = ZERO_SHOT_COLORS[k % ZERO_SHOT_COLORS.len()];
        legend_area.draw(&DashedPathElement::new(
            [(x0, y), (x0 + 34, y)],
            9,
            6,
            color.stroke_width(2),
        ))?;
        legend_area.draw(&Text::new(
            format!("{} ({acc:.1}%)", truncate(name, 20)),
            (x0 + 44, y),
            text(14.0).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        y += entry_h;
    }
    // Notes under the legend.
    y += 8;
    let mut notes = Vec::new();
    if curves.iter().any(|c| c.points.iter().any(|p| p.2 > 0.0)) {
        let seeds = f
            .summary
            .iter()
            .filter(|s| s.family != FAMILY_ZERO_SHOT)
            .map(|s| s.seeds)
            .max()
            .unwrap_or(f.results.seeds);
        notes.push(format!("Bands and bars: ± 1 std over {seeds} seeds"));
    }
    if !flat.is_empty() {
        notes.push("Dashed: zero-shot (no labels)".to_string());
    }
    notes.push(format!("Model: {}", truncate_start(&f.results.model, 34)));
    notes.push(format!(
        "Training images: {} ({:.1}/class)",
        f.results.n_train, f.mean_train_per_class
    ));
    for note in notes {
        legend_area.draw(&Text::new(
            note,
            (x0, y),
            text(12.5)
                .color(&grey)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        y += 20;
    }
    root.present()?;
    Ok(())
}

/// `s` cut to its last `max` characters, starting with `…` when cut (for paths).
pub(crate) fn truncate_start(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        s.to_string()
    } else {
        let tail: String = s.chars().skip(n - max + 1).collect();
        format!("…{tail}")
    }
}

/// Rasterises `svg` with resvg at `scale` times its size, with the embedded font.
pub(crate) fn svg_to_png(svg: &str, scale: f32) -> Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    let mut fonts = usvg::fontdb::Database::new();
    fonts.load_font_data(FONT_BYTES.to_vec());
    fonts.set_sans_serif_family(FONT);
    let options = usvg::Options {
        font_family: FONT.to_string(),
        fontdb: Arc::new(fonts),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &options).map_err(|e| e.to_string())?;
    let size = tree.size();
    let (w, h) = (
        (size.width() * scale).round() as u32,
        (size.height() * scale).round() as u32,
    );
    let mut pixmap =
        tiny_skia::Pixmap::new(w, h).ok_or_else(|| format!("invalid image size {w}×{h}"))?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| e.to_string())
}
