//! `report.md` and the compact table printed to the terminal, both from the numbers
//! [`super::summarize`] computed once.

use super::*;

/// Escapes text for a markdown table cell.
pub(crate) fn md_cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

/// A number with three significant digits: `0.316`, `31.6`, `1000`, `1.00e-4`.
pub(crate) fn short_number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return x.to_string();
    }
    if x.fract() == 0.0 && x.abs() < 1e9 {
        return format!("{x:.0}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    if !(-3..5).contains(&magnitude) {
        return format!("{x:.2e}");
    }
    let decimals = (2 - magnitude).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A JSON value in short form: strings bare, numbers by [`short_number`].
pub(crate) fn short_value(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), short_number),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(short_value).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// A run's `details` in one short line, as `report.md` shows it: `templates=18`, or for one
/// object per seed, each key's values across seeds: `c=0.316/1/3.16, cv_accuracy=0.71/0.7/0.73`
/// (one value when all seeds agree; `seed` and null values left out).
pub fn details_text(v: &serde_json::Value) -> String {
    use serde_json::Value;
    let objects: Vec<&serde_json::Map<String, Value>> = match v {
        Value::Object(m) => vec![m],
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_object) => {
            a.iter().filter_map(Value::as_object).collect()
        }
        Value::Null => return String::new(),
        other => return truncate(&short_value(other), 100),
    };
    let mut keys: Vec<&String> = Vec::new();
    for m in &objects {
        for k in m.keys() {
            if k != "seed" && !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let parts: Vec<String> = keys
        .into_iter()
        .filter_map(|k| {
            let mut values: Vec<String> = objects
                .iter()
                .filter_map(|m| m.get(k))
                .filter(|v| !v.is_null())
                .map(short_value)
                .collect();
            if values.is_empty() {
                return None;
            }
            if values.iter().all(|x| *x == values[0]) {
                values.truncate(1);
            }
            Some(format!("{k}={}", values.join("/")))
        })
        .collect();
    truncate(&parts.join(", "), 100)
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub(crate) fn pct_or_dash(a: Option<f64>) -> String {
    a.map_or_else(|| "–".to_string(), |a| format!("{a:.2}"))
}

/// The markdown report.
pub(crate) fn markdown(f: &ResultsFile) -> String {
    use std::fmt::Write;
    let r = &f.results;
    let mut md = String::new();
    let multi_seed = f.summary.iter().any(|s| s.seeds > 1);
    let _ = writeln!(md, "# cliplabel compare\n");
    let _ = writeln!(md, "- Model: `{}`", r.model.replace('`', "'"));
    let _ = writeln!(md, "- Classes: {}", r.classes.len());
    let _ = writeln!(
        md,
        "- Training set: {} images ({:.2} per class on average); test set: {} images",
        r.n_train, f.mean_train_per_class, r.n_test
    );
    let _ = writeln!(
        md,
        "- Seeds: {}{}",
        r.seeds,
        if multi_seed {
            " (each seed draws its own k-shot training subset; ± is the sample standard \
             deviation over seeds)"
        } else {
            ""
        }
    );
    for note in &r.notes {
        let _ = writeln!(md, "- Note: {note}");
    }
    let _ = writeln!(
        md,
        "- All numbers are percentages on the test set{}; \"Shots\" is labelled training \
         images per class.\n",
        if r.classes.len() < 5 {
            " (no top-5: fewer than 5 classes)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "![Top-1 accuracy against labelled examples per class](shots.svg)\n"
    );

    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "| Method | Family | Shots | Top-1 | Top-5 | Macro-F1 | Details |"
    );
    let _ = writeln!(md, "|---|---|--:|--:|--:|--:|---|");
    for (s, run) in f.summary.iter().zip(&r.runs) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            md_cell(&s.method),
            md_cell(&s.family),
            run.shots_label(),
            s.top1_pct.display(s.seeds),
            s.top5_pct
                .map_or_else(|| "–".into(), |t| t.display(s.seeds)),
            s.macro_f1_pct.display(s.seeds),
            md_cell(&s.details),
        );
    }

    let best: Vec<usize> = (0..f.summary.len())
        .filter(|&i| f.summary[i].best_in_family)
        .collect();
    if best.is_empty() {
        return md;
    }

    let _ = writeln!(md, "\n## Per-class accuracy\n");
    let _ = writeln!(
        md,
        "The best run of each family (highest top-1): recall per class in percent, mean over \
         seeds; \"–\" marks a class with no test images.\n"
    );
    let support = r
        .runs
        .first()
        .and_then(|run| run.per_seed.first())
        .map(Metrics::support)
        .unwrap_or_default();
    let mut header = "| # | Class | Test images |".to_string();
    let mut rule = "|--:|---|--:|".to_string();
    for &i in &best {
        let _ = write!(header, " {} |", md_cell(&r.runs[i].label()));
        rule.push_str("--:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for (c, name) in r.classes.iter().enumerate() {
        let _ = write!(
            md,
            "| {c} | {} | {} |",
            md_cell(name),
            support.get(c).copied().unwrap_or(0)
        );
        for &i in &best {
            let acc = f.summary[i]
                .per_class_accuracy_pct
                .as_ref()
                .and_then(|a| a.get(c).copied().flatten());
            let _ = write!(md, " {} |", pct_or_dash(acc));
        }
        md.push('\n');
    }

    let n = r.classes.len();
    let _ = writeln!(md, "\n## Confusion matrices\n");
    if n <= MAX_CONFUSION_CLASSES {
        let _ = writeln!(
            md,
            "Rows are the true class, columns the predicted class, numbered as in the table \
             above; counts are summed over the run's seeds.\n"
        );
    } else {
        let _ = writeln!(
            md,
            "With {n} classes (more than {MAX_CONFUSION_CLASSES}) the matrices are too large to \
             show; below are the 20 most frequent confusions of each run, counted over its \
             seeds. The full matrices are in `results.json` (`summary[i].confusion_total`, and \
             per seed in `runs[i].per_seed[j].confusion`).\n"
        );
    }
    for &i in &best {
        let s = &f.summary[i];
        let Some(conf) = s.confusion_total.as_ref() else {
            continue;
        };
        let _ = writeln!(
            md,
            "### {} — {} seed{}\n",
            md_cell(&r.runs[i].label()),
            s.seeds,
            if s.seeds == 1 { "" } else { "s" }
        );
        if n <= MAX_CONFUSION_CLASSES {
            let mut header = "| true \\ predicted |".to_string();
            let mut rule = "|---|".to_string();
            for c in 0..n {
                let _ = write!(header, " {c} |");
                rule.push_str("--:|");
            }
            let _ = writeln!(md, "{header}\n{rule}");
            for (t, row) in conf.iter().enumerate() {
                let name = r.classes.get(t).map_or("", String::as_str);
                let _ = write!(md, "| {t} {} |", md_cell(&truncate(name, 24)));
                for v in row {
                    let _ = write!(md, " {v} |");
                }
                md.push('\n');
            }
        } else {
            let mut pairs: Vec<(usize, usize, usize)> = Vec::new();
            for (t, row) in conf.iter().enumerate() {
                for (p, &v) in row.iter().enumerate() {
                    if t != p && v > 0 {
                        pairs.push((v, t, p));
                    }
                }
            }
            pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let _ = writeln!(md, "| True class | Predicted as | Count |\n|---|---|--:|");
            let name = |c: usize| md_cell(r.classes.get(c).map_or("", String::as_str));
            for &(v, t, p) in pairs.iter().take(20) {
                let _ = writeln!(md, "| {t} {} | {p} {} | {v} |", name(t), name(p));
            }
        }
        md.push('\n');
    }
    md
}

/// The compact results table printed to the terminal (plain text, aligned columns).
pub fn summary_table(r: &CompareResults) -> String {
    let summary = summarize(r);
    let headers = ["Method", "Shots", "Top-1 %", "Top-5 %", "Macro-F1 %"];
    let rows: Vec<[String; 5]> = summary
        .iter()
        .zip(&r.runs)
        .map(|(s, run)| {
            [
                s.method.clone(),
                run.shots_label(),
                s.top1_pct.display(s.seeds),
                s.top5_pct
                    .map_or_else(|| "-".into(), |t| t.display(s.seeds)),
                s.macro_f1_pct.display(s.seeds),
            ]
        })
        .collect();
    let mut widths = headers.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let fmt_row = |cells: [&str; 5]| {
        let mut line = String::new();
        for (k, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            if k > 0 {
                line.push_str("  ");
            }
            if k == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        line.trim_end().to_string()
    };
    let mut out = fmt_row(headers);
    out.push('\n');
    out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
    out.push('\n');
    for row in &rows {
        out.push_str(&fmt_row([&row[0], &row[1], &row[2], &row[3], &row[4]]));
        out.push('\n');
    }
    if let Some(seeds) = summary.iter().map(|s| s.seeds).max().filter(|&s| s > 1) {
        out.push_str(&format!(
            "(mean ± sample std over {seeds} seeds where a run was repeated)\n"
        ));
    }
    out
}
