//! Classification metrics from per-class scores (probabilities or logits) and true labels.
//!
//! Conventions, shared by every method that `compare` evaluates:
//! - The prediction is the arg-max of a score row; ties go to the lowest class index, and a NaN
//!   score never wins (it ranks below every number).
//! - Top-5 counts an example as correct when fewer than five classes rank above its true class,
//!   ranking by score and, among equal scores, by lower index (the same tie rule as top-1).
//! - Macro-F1 is exactly scikit-learn's `f1_score(y_true, y_pred, average="macro",
//!   zero_division=0)`: the unweighted mean of per-class F1 = 2·TP / (2·TP + FP + FN) over the
//!   classes that occur in the true labels or in the predictions (sklearn's default `labels`,
//!   `unique_labels(y_true, y_pred)`); a class that is neither a true label nor ever predicted
//!   does not count. A class that is predicted but never true has F1 = 0.
//! - Per-class accuracy is recall per class (correct / test examples of that class), `None` for
//!   a class with no test examples, so the numbers are free of NaN.
//! - An empty test set gives zeros (and `None` per class).

use serde::{Deserialize, Serialize};

/// The metrics of one method on one test set (one seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Fraction of examples whose arg-max prediction is the true class (0..=1).
    pub top1: f64,
    /// Fraction whose true class is among the five highest scores; only with at least 5 classes.
    pub top5: Option<f64>,
    /// Macro-averaged F1 (0..=1), as scikit-learn's `f1_score(average="macro", zero_division=0)`.
    pub macro_f1: f64,
    /// Recall of each class (indexed by class); `None` where the test set has no example of it.
    pub per_class_accuracy: Vec<Option<f64>>,
    /// Confusion counts, `confusion[true][predicted]`, `n_classes × n_classes`.
    pub confusion: Vec<Vec<usize>>,
    /// Number of test examples.
    pub n: usize,
}

impl Metrics {
    /// Number of test examples of each class (the confusion matrix's row sums).
    pub fn support(&self) -> Vec<usize> {
        self.confusion.iter().map(|row| row.iter().sum()).collect()
    }
}

/// A score for ranking: NaN below everything.
fn key(s: f32) -> f32 {
    if s.is_nan() {
        f32::NEG_INFINITY
    } else {
        s
    }
}

/// Index of the highest score; the lowest index among ties; 0 for an empty row.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &s) in row.iter().enumerate().skip(1) {
        if key(s) > key(row[best]) {
            best = i;
        }
    }
    best
}

/// How many classes rank above class `c` in `row` (higher score, or equal score and lower index).
fn rank_of(row: &[f32], c: usize) -> usize {
    let sc = key(row[c]);
    row.iter()
        .enumerate()
        .filter(|&(i, &s)| key(s) > sc || (key(s) == sc && i < c))
        .count()
}

/// Evaluates `scores` (one row of `n_classes` scores per example) against `labels`.
///
/// # Panics
/// If `scores` and `labels` differ in length, a row is not `n_classes` long, or a label is not
/// below `n_classes`: these are programming errors in the caller, not user input.
pub fn evaluate(scores: &[Vec<f32>], labels: &[usize], n_classes: usize) -> Metrics {
    assert_eq!(
        scores.len(),
        labels.len(),
        "evaluate: {} score rows but {} labels",
        scores.len(),
        labels.len()
    );
    let n = labels.len();
    let mut confusion = vec![vec![0usize; n_classes]; n_classes];
    let mut correct = 0usize;
    let mut top5_correct = 0usize;
    for (i, (row, &y)) in scores.iter().zip(labels).enumerate() {
        assert_eq!(
            row.len(),
            n_classes,
            "evaluate: score row {i} has {} entries, expected {n_classes}",
            row.len()
        );
        assert!(
            y < n_classes,
            "evaluate: label {y} of example {i} is not below {n_classes}"
        );
        let p = argmax(row);
        confusion[y][p] += 1;
        correct += usize::from(p == y);
        if n_classes >= 5 && rank_of(row, y) < 5 {
            top5_correct += 1;
        }
    }
    let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };

    let mut f1_sum = 0.0;
    let mut f1_count = 0usize;
    let mut per_class_accuracy = Vec::with_capacity(n_classes);
    for c in 0..n_classes {
        let tp = confusion[c][c];
        let support: usize = confusion[c].iter().sum();
        let predicted: usize = confusion.iter().map(|row| row[c]).sum();
        let (fn_, fp) = (support - tp, predicted - tp);
        per_class_accuracy.push((support > 0).then(|| tp as f64 / support as f64));
        if support > 0 || predicted > 0 {
            f1_sum += 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64;
            f1_count += 1;
        }
    }
    Metrics {
        top1: frac(correct),
        top5: (n_classes >= 5).then(|| frac(top5_correct)),
        macro_f1: if f1_count == 0 {
            0.0
        } else {
            f1_sum / f1_count as f64
        },
        per_class_accuracy,
        confusion,
        n,
    }
}

/// Mean and sample standard deviation (divisor n − 1) of `xs`; the std is 0 for a single value,
/// and both are 0 for an empty slice.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() == 1 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One-hot-ish score rows that predict `preds`.
    fn rows_for(preds: &[usize], n_classes: usize) -> Vec<Vec<f32>> {
        preds
            .iter()
            .map(|&p| {
                let mut r = vec![0.1; n_classes];
                r[p] = 0.9;
                r
            })
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn three_class_confusion_by_hand() {
        let labels = [0, 0, 0, 1, 1, 2];
        let preds = [0, 0, 1, 1, 2, 2];
        let m = evaluate(&rows_for(&preds, 3), &labels, 3);
        assert_eq!(m.n, 6);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]
        );
        assert!(close(m.top1, 4.0 / 6.0));
        assert_eq!(m.top5, None);
        assert_eq!(
            m.per_class_accuracy,
            vec![Some(2.0 / 3.0), Some(0.5), Some(1.0)]
        );
        assert_eq!(m.support(), vec![3, 2, 1]);
        // F1 per class: 2·2/(4+0+1) = 0.8, 2·1/(2+1+1) = 0.5, 2·1/(2+1+0) = 2/3.
        // python -c "from sklearn.metrics import f1_score; print(repr(f1_score([0,0,0,1,1,2],[0,0,1,1,2,2],average='macro',zero_division=0)))"
        // → 0.6555555555555556 (scikit-learn 1.9.1)
        assert!(close(m.macro_f1, (0.8 + 0.5 + 2.0 / 3.0) / 3.0));
        assert!(close(m.macro_f1, 0.6555555555555556));
    }

    #[test]
    fn macro_f1_matches_scikit_learn() {
        // 8 classes: class 6 is only predicted (F1 = 0, counted), class 7 never occurs (not counted).
        let labels = [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 0, 1];
        let preds = [0, 1, 1, 1, 2, 0, 6, 3, 4, 4, 4, 0, 5, 0, 2];
        let m = evaluate(&rows_for(&preds, 8), &labels, 8);
        // python -c "from sklearn.metrics import f1_score; print(repr(f1_score([0,0,1,1,2,2,2,3,3,4,4,4,5,0,1],[0,1,1,1,2,0,6,3,4,4,4,0,5,0,2],average='macro',zero_division=0)))"
        // → 0.5673469387755101 (scikit-learn 1.9.1)
        assert!(
            (m.macro_f1 - 0.5673469387755101).abs() < 1e-12,
            "{}",
            m.macro_f1
        );
        assert_eq!(m.per_class_accuracy[6], None);
        assert_eq!(m.per_class_accuracy[7], None);
        assert!(close(m.top1, 9.0 / 15.0));
    }

    #[test]
    fn ties_go_to_the_lowest_index_and_nan_never_wins() {
        assert_eq!(argmax(&[0.5, 0.5, 0.2]), 0);
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.1, 0.3]), 2);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
        let m = evaluate(&[vec![1.0, 1.0, 1.0]], &[1], 3);
        assert_eq!(m.confusion[1][0], 1);
        assert_eq!(m.top1, 0.0);
    }

    #[test]
    fn top5() {
        // 6 classes; true class ranks 1st, 5th, 6th, and 5th-by-tie-break respectively.
        let scores = vec![
            vec![0.9, 0.1, 0.1, 0.1, 0.1, 0.1],
            vec![0.6, 0.5, 0.4, 0.3, 0.2, 0.1], // label 4 (score 0.2) ranks 5th → in top 5
            vec![0.6, 0.5, 0.4, 0.3, 0.2, 0.1], // label 5 ranks 6th → not in top 5
            vec![0.5, 0.5, 0.5, 0.5, 0.5, 0.5], // label 4: four equal scores at lower indices
        ];
        let m = evaluate(&scores, &[0, 4, 5, 4], 6);
        assert_eq!(m.top5, Some(0.75));
        assert_eq!(m.top1, 0.25);
        // The last row again with label 5: five ties at lower indices → out.
        let m = evaluate(&scores[3..], &[5], 6);
        assert_eq!(m.top5, Some(0.0));
        // Exactly 5 classes: top-5 is always 1.
        let m = evaluate(&[vec![0.0, 0.1, 0.2, 0.3, 0.4]], &[0], 5);
        assert_eq!(m.top5, Some(1.0));
        let m = evaluate(&[vec![0.0, 0.1, 0.2, 0.3]], &[0], 4);
        assert_eq!(m.top5, None);
    }

    #[test]
    fn empty_test_set_is_nan_free() {
        let m = evaluate(&[], &[], 3);
        assert_eq!((m.top1, m.macro_f1, m.n), (0.0, 0.0, 0));
        assert_eq!(m.per_class_accuracy, vec![None, None, None]);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Metrics>(&json).unwrap(), m);
    }

    #[test]
    #[should_panic(expected = "label 3")]
    fn label_out_of_range_panics() {
        evaluate(&[vec![0.0; 3]], &[3], 3);
    }

    #[test]
    fn mean_and_sample_std() {
        assert_eq!(mean_std(&[]), (0.0, 0.0));
        assert_eq!(mean_std(&[0.7]), (0.7, 0.0));
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert!(close(m, 5.0));
        // Sample variance 32/7 (numpy: np.std([2,4,4,4,5,5,7,9], ddof=1) = 2.138089935299395).
        assert!(close(s, (32.0f64 / 7.0).sqrt()));
    }
}
