//! The report of `cliplabel calibrate`: `calibration.md` and `calibration.svg` (precision and
//! coverage of the calibration images against the threshold, with the chosen point and the
//! precision bound, beside a reliability diagram of the top-1 probability).
//!
//! Drawn with plotters' SVG backend and the embedded DejaVu Sans font, like the `compare` plot.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use super::ReportError;
use crate::classify::calibration::{Calibration, CalibrationCurves};
use crate::util::atomic::write_atomic;

static FONT_BYTES: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");
const FONT: &str = "DejaVu Sans";
/// Bins of the reliability diagram.
pub const BINS: usize = 10;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// One bin of the reliability diagram: images whose top-1 probability falls in `[lo, hi)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReliabilityBin {
    /// Lower edge.
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Images in the bin.
    pub count: usize,
    /// Their mean top-1 probability.
    pub confidence: f64,
    /// Their accuracy.
    pub accuracy: f64,
}

/// The reliability diagram's bins (empty bins are left out) and the expected calibration error.
pub fn reliability(top1: &[(f32, bool)]) -> (Vec<ReliabilityBin>, f64) {
    let mut sums = vec![(0usize, 0.0f64, 0usize); BINS];
    for &(p, ok) in top1 {
        let b = ((p as f64 * BINS as f64) as usize).min(BINS - 1);
        sums[b].0 += 1;
        sums[b].1 += p as f64;
        sums[b].2 += usize::from(ok);
    }
    let n = top1.len().max(1) as f64;
    let mut ece = 0.0;
    let bins = sums
        .iter()
        .enumerate()
        .filter(|(_, s)| s.0 > 0)
        .map(|(i, &(c, ps, ok))| {
            let bin = ReliabilityBin {
                lo: i as f64 / BINS as f64,
                hi: (i + 1) as f64 / BINS as f64,
                count: c,
                confidence: ps / c as f64,
                accuracy: ok as f64 / c as f64,
            };
            ece += c as f64 / n * (bin.accuracy - bin.confidence).abs();
            bin
        })
        .collect();
    (bins, ece)
}

/// The markdown report.
pub fn markdown(cal: &Calibration, curves: &CalibrationCurves) -> String {
    let t = &cal.threshold;
    let mut m = String::from("# Calibration\n\n");
    m.push_str(&format!(
        "Model `{}`, scorer `{}`, {} classes, {} labelled images.\n\n",
        cal.made_for.model,
        crate::classify::calibration::method_name(cal.made_for.method),
        cal.made_for.classes.len(),
        cal.n
    ));
    m.push_str(&format!(
        "**Threshold {:.3}** on the {} (`{}`): among accepted images, precision >= {} with probability >= {} \
         (Learn then Test: Clopper-Pearson bounds, fixed-sequence testing from high to low thresholds).\n\n",
        t.threshold,
        match cal.confidence {
            crate::classify::calibration::Confidence::Top1 => "top-1 probability",
            crate::classify::calibration::Confidence::Margin => "top-1 minus top-2 margin",
        },
        cal.method,
        cal.target_precision,
        1.0 - cal.delta
    ));
    m.push_str("| | value |\n|---|---|\n");
    m.push_str(&format!(
        "| coverage (share accepted) | {:.1}% ({} of {}) |\n",
        100.0 * t.coverage,
        t.accepted,
        t.n
    ));
    m.push_str(&format!(
        "| precision of accepted calibration images | {:.2}% |\n",
        100.0 * t.precision
    ));
    m.push_str(&format!(
        "| upper bound on their error rate | {:.2}% (allowed {:.2}%) |\n",
        100.0 * t.error_bound,
        100.0 * (1.0 - cal.target_precision)
    ));
    if let Some(s) = &cal.sets {
        m.push_str(&format!(
            "| prediction sets at {:.0}% | quantile {:.4}, mean size {:.2}, calibration coverage {:.1}% |\n",
            100.0 * s.level,
            s.quantile,
            s.mean_size,
            100.0 * s.calibration_coverage
        ));
    }
    if let Some(pc) = &cal.per_class {
        m.push_str("\n## Per-class thresholds\n\n| class | images | threshold | own |\n|---|---:|---:|---|\n");
        for c in pc {
            m.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                c.class.replace('|', "\\|"),
                c.n,
                c.threshold
                    .map_or("always abstain".into(), |t| format!("{t:.3}")),
                if c.own { "yes" } else { "pooled" }
            ));
        }
    }
    let (bins, ece) = reliability(&curves.top1);
    m.push_str(&format!(
        "\n## Reliability of the top-1 probability\n\nExpected calibration error {:.2}%.\n\n| probability | images | mean probability | accuracy |\n|---|---:|---:|---:|\n",
        100.0 * ece
    ));
    for b in &bins {
        m.push_str(&format!(
            "| {:.1}-{:.1} | {} | {:.1}% | {:.1}% |\n",
            b.lo,
            b.hi,
            b.count,
            100.0 * b.confidence,
            100.0 * b.accuracy
        ));
    }
    m.push_str("\n![precision and coverage against threshold; reliability](calibration.svg)\n");
    m
}

/// The plot as an SVG document.
pub fn plot_svg(cal: &Calibration, curves: &CalibrationCurves) -> Result<String, String> {
    register_font();
    let mut svg = String::new();
    draw(cal, curves, &mut svg).map_err(|e| e.to_string())?;
    Ok(svg)
}

fn draw(
    cal: &Calibration,
    curves: &CalibrationCurves,
    svg: &mut String,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(640);
    let n = cal.n.max(1) as f64;
    let mut c = ChartBuilder::on(&left)
        .caption("Precision and coverage by threshold", (FONT, 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)?;
    c.configure_mesh()
        .x_desc("threshold")
        .y_desc("share")
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .draw()?;
    let prec: Vec<(f64, f64)> = curves
        .curve
        .iter()
        .filter_map(|p| p.precision().map(|v| (p.threshold, v)))
        .collect();
    let lower: Vec<(f64, f64)> = curves
        .curve
        .iter()
        .filter(|p| p.accepted > 0)
        .map(|p| (p.threshold, 1.0 - p.error_bound))
        .collect();
    let cov: Vec<(f64, f64)> = curves
        .curve
        .iter()
        .map(|p| (p.threshold, p.accepted as f64 / n))
        .collect();
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let grey = RGBColor(120, 120, 120);
    c.draw_series(LineSeries::new(prec, blue.stroke_width(2)))?
        .label("precision (calibration images)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], blue.stroke_width(2)));
    c.draw_series(LineSeries::new(lower, blue.mix(0.45).stroke_width(1)))?
        .label("precision lower bound (1 - delta)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], blue.mix(0.45)));
    c.draw_series(LineSeries::new(cov, orange.stroke_width(2)))?
        .label("coverage")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], orange.stroke_width(2)));
    c.draw_series(LineSeries::new(
        vec![(0.0, cal.target_precision), (1.0, cal.target_precision)],
        grey.stroke_width(1),
    ))?
    .label(format!("target {}", cal.target_precision))
    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey));
    let t = cal.threshold.threshold;
    c.draw_series(std::iter::once(PathElement::new(
        vec![(t, 0.0), (t, 1.02)],
        BLACK.stroke_width(1),
    )))?;
    c.draw_series(std::iter::once(Circle::new(
        (t, cal.threshold.coverage),
        5,
        BLACK.filled(),
    )))?
    .label(format!(
        "chosen {:.3}: coverage {:.1}%",
        t,
        100.0 * cal.threshold.coverage
    ))
    .legend(|(x, y)| Circle::new((x + 9, y), 4, BLACK.filled()));
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT, 12))
        .draw()?;

    let (bins, _) = reliability(&curves.top1);
    let mut r = ChartBuilder::on(&right)
        .caption("Reliability (top-1 probability)", (FONT, 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    r.configure_mesh()
        .x_desc("mean predicted probability")
        .y_desc("accuracy")
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .draw()?;
    r.draw_series(LineSeries::new(vec![(0.0, 0.0), (1.0, 1.0)], grey))?;
    r.draw_series(bins.iter().map(|b| {
        Rectangle::new(
            [(b.lo + 0.01, 0.0), (b.hi - 0.01, b.accuracy)],
            blue.mix(0.7).filled(),
        )
    }))?;
    r.draw_series(
        bins.iter()
            .map(|b| Circle::new((b.confidence, b.accuracy), 3, orange.filled())),
    )?;
    root.present()?;
    Ok(())
}

/// Writes `dir/calibration.md` and `dir/calibration.svg` (creating `dir`), atomically.
pub fn write_calibration_report(
    dir: &Path,
    cal: &Calibration,
    curves: &CalibrationCurves,
) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let svg_path = dir.join("calibration.svg");
    let svg = plot_svg(cal, curves).map_err(|message| ReportError::Plot {
        path: svg_path.clone(),
        message,
    })?;
    let write = |path: &Path, bytes: &[u8]| {
        write_atomic(path, bytes).map_err(|source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    write(
        &dir.join("calibration.md"),
        markdown(cal, curves).as_bytes(),
    )?;
    write(&svg_path, svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::calibration::{calibrate, CalibrateOptions, MadeFor};

    #[test]
    fn report_files_and_reliability() {
        // 300 images, 3 classes: probability p on the predicted class, right when i % 10 < 9.
        let mut probs = Vec::new();
        let mut labels = Vec::new();
        for i in 0..300usize {
            let p = 0.4 + 0.6 * (i as f32 / 299.0);
            let q = (1.0 - p) / 2.0;
            probs.push(vec![p, q, q]);
            labels.push(if i % 10 < 9 || i > 250 { 0 } else { 1 });
        }
        let made_for = MadeFor {
            model: "m".into(),
            model_fingerprint: "f".into(),
            method: crate::jobs::label::RunMethod::ZeroShot,
            scorer_key: "k".into(),
            classes: vec!["a".into(), "b".into(), "c".into()],
        };
        let opts = CalibrateOptions {
            target_precision: 0.9,
            sets: Some(0.9),
            ..Default::default()
        };
        let (cal, curves) = calibrate(&probs, &labels, made_for, &opts).unwrap();
        let (bins, ece) = reliability(&curves.top1);
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 300);
        assert!(bins
            .iter()
            .all(|b| b.lo <= b.confidence && b.confidence < b.hi + 1e-9));
        assert!(ece > 0.0 && ece < 1.0);
        let d = tempfile::tempdir().unwrap();
        write_calibration_report(d.path(), &cal, &curves).unwrap();
        let md = std::fs::read_to_string(d.path().join("calibration.md")).unwrap();
        assert!(md.contains(&format!("**Threshold {:.3}**", cal.threshold.threshold)));
        assert!(md.contains("coverage (share accepted)"));
        assert!(md.contains("prediction sets at 90%"));
        let svg = std::fs::read_to_string(d.path().join("calibration.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("Reliability"));
    }
}
