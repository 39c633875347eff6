//! Likely mislabels by confident learning (Northcutt, Jiang and Chuang, "Confident Learning:
//! Estimating Uncertainty in Dataset Labels", JAIR 70, 2021), on out-of-fold predicted
//! probabilities.
//!
//! For each class `j` the threshold `t_j` is the mean predicted probability of `j` over the
//! images labelled `j` (its mean self-confidence). An image *confidently belongs* to the classes
//! whose probability reaches their threshold; among those, its suggested class is the most
//! probable. The confident joint counts (given label, suggested class) over the images that
//! confidently belong to at least one class; its off-diagonal entries are the label issues
//! (cleanlab's `filter_by="confident_learning"`). They are ranked by a label-quality score,
//! lowest (most suspicious) first: the self-confidence `p[given]`, or the normalised margin
//! `(p[given] - max_{j != given} p[j] + 1) / 2`.
//!
//! The estimated noise rate of a class is the off-diagonal share of its row of the confident
//! joint (the row calibration of the paper rescales a row to the class count, which keeps that
//! share). Written by hand: the method is a few loops over the probability matrix, and the
//! Rust crates that exist for it are not maintained.

use serde::{Deserialize, Serialize};

use super::AuditError;

/// How label issues are ranked (and what the `score` column holds; lower is more suspicious).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RankBy {
    /// `p[given]`, the predicted probability of the given label.
    #[default]
    SelfConfidence,
    /// `(p[given] - max_{j != given} p[j] + 1) / 2`, in `[0, 1]`.
    NormalizedMargin,
}

/// One likely mislabel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelIssue {
    /// Row of the image in the audited set.
    pub index: usize,
    /// The label it was given.
    pub given: usize,
    /// The class it confidently belongs to.
    pub suggested: usize,
    /// Its label-quality score under the chosen [`RankBy`] (lower is more suspicious).
    pub score: f64,
}

/// What confident learning found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfidentLearning {
    /// Per-class threshold (mean self-confidence; infinite for a class nobody is labelled with).
    pub thresholds: Vec<f64>,
    /// `confident_joint[given][suggested]`: counts over confidently counted images.
    pub confident_joint: Vec<Vec<usize>>,
    /// Estimated share of each given class whose label is wrong (0 where no image of the class
    /// was confidently counted).
    pub noise_rate: Vec<f64>,
    /// Images labelled with each class.
    pub class_counts: Vec<usize>,
    /// The off-diagonal images, ranked by score (ascending), ties by row.
    pub issues: Vec<LabelIssue>,
}

/// Label-quality score of a row of probabilities under `rank_by`.
pub fn label_quality(p: &[f32], given: usize, rank_by: RankBy) -> f64 {
    let own = p[given] as f64;
    match rank_by {
        RankBy::SelfConfidence => own,
        RankBy::NormalizedMargin => {
            let other = p
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != given)
                .map(|(_, &v)| v as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let other = if other.is_finite() { other } else { 0.0 };
            (own - other + 1.0) / 2.0
        }
    }
}

/// Runs confident learning on `probs` (`labels.len() * n_classes` values, row-major, each row
/// a probability distribution).
pub fn confident_learning(
    probs: &[f32],
    n_classes: usize,
    labels: &[usize],
    rank_by: RankBy,
) -> Result<ConfidentLearning, AuditError> {
    let n = labels.len();
    if n_classes == 0 {
        return Err(AuditError::BadOption {
            option: "classes",
            message: "at least one class is needed".into(),
        });
    }
    if probs.len() != n * n_classes {
        return Err(AuditError::Shape {
            what: "predicted probabilities".into(),
            expected: n * n_classes,
            found: probs.len(),
        });
    }
    if let Some(row) = labels.iter().position(|&l| l >= n_classes) {
        return Err(AuditError::LabelOutOfRange {
            row,
            label: labels[row],
            n_classes,
        });
    }
    if let Some(i) = probs.iter().position(|v| !v.is_finite()) {
        return Err(AuditError::NonFinite {
            what: "predicted probabilities".into(),
            row: i / n_classes,
        });
    }
    let mut sum = vec![0f64; n_classes];
    let mut class_counts = vec![0usize; n_classes];
    for (row, &l) in probs.chunks_exact(n_classes).zip(labels) {
        sum[l] += row[l] as f64;
        class_counts[l] += 1;
    }
    let thresholds: Vec<f64> = sum
        .iter()
        .zip(&class_counts)
        .map(|(&s, &c)| if c > 0 { s / c as f64 } else { f64::INFINITY })
        .collect();
    let mut joint = vec![vec![0usize; n_classes]; n_classes];
    let mut issues = Vec::new();
    for (i, (row, &given)) in probs.chunks_exact(n_classes).zip(labels).enumerate() {
        let mut best: Option<usize> = None;
        for (j, &p) in row.iter().enumerate() {
            if p as f64 >= thresholds[j] && best.is_none_or(|b| p > row[b]) {
                best = Some(j);
            }
        }
        let Some(suggested) = best else { continue };
        joint[given][suggested] += 1;
        if suggested != given {
            issues.push(LabelIssue {
                index: i,
                given,
                suggested,
                score: label_quality(row, given, rank_by),
            });
        }
    }
    issues.sort_by(|a, b| a.score.total_cmp(&b.score).then(a.index.cmp(&b.index)));
    let noise_rate = joint
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let total: usize = row.iter().sum();
            if total == 0 {
                0.0
            } else {
                (total - row[c]) as f64 / total as f64
            }
        })
        .collect();
    Ok(ConfidentLearning {
        thresholds,
        confident_joint: joint,
        noise_rate,
        class_counts,
        issues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Six images, three classes, worked by hand:
    /// thresholds: class 0 = (0.8 + 0.7 + 0.1) / 3 = 0.5333; class 1 = (0.6 + 0.2) / 2 = 0.4;
    /// class 2 = 0.9 / 1.
    /// row 0 (given 0): p = .8 .1 .1 -> confident {0} -> (0, 0)
    /// row 1 (given 0): p = .7 .2 .1 -> {0} -> (0, 0)
    /// row 2 (given 0): p = .1 .85 .05 -> {1} -> (0, 1) issue, self-confidence 0.1
    /// row 3 (given 1): p = .3 .6 .1 -> {1} -> (1, 1)
    /// row 4 (given 1): p = .55 .2 .25 -> {0} (0.55 >= 0.5333) -> (1, 0) issue, score 0.2
    /// row 5 (given 2): p = .05 .05 .9 -> {2} -> (2, 2)
    const P: [f32; 18] = [
        0.8, 0.1, 0.1, 0.7, 0.2, 0.1, 0.1, 0.85, 0.05, 0.3, 0.6, 0.1, 0.55, 0.2, 0.25, 0.05, 0.05,
        0.9,
    ];
    const Y: [usize; 6] = [0, 0, 0, 1, 1, 2];

    #[test]
    fn hand_computed_confident_joint_and_issues() {
        let cl = confident_learning(&P, 3, &Y, RankBy::SelfConfidence).unwrap();
        assert!((cl.thresholds[0] - 1.6 / 3.0).abs() < 1e-6);
        assert!((cl.thresholds[1] - 0.4).abs() < 1e-6);
        assert!((cl.thresholds[2] - 0.9).abs() < 1e-6);
        assert_eq!(
            cl.confident_joint,
            vec![vec![2, 1, 0], vec![1, 1, 0], vec![0, 0, 1]]
        );
        let got: Vec<(usize, usize, usize)> = cl
            .issues
            .iter()
            .map(|i| (i.index, i.given, i.suggested))
            .collect();
        assert_eq!(got, vec![(2, 0, 1), (4, 1, 0)]);
        assert!((cl.issues[0].score - 0.1).abs() < 1e-6);
        assert!((cl.issues[1].score - 0.2).abs() < 1e-6);
        assert!((cl.noise_rate[0] - 1.0 / 3.0).abs() < 1e-12);
        assert!((cl.noise_rate[1] - 0.5).abs() < 1e-12);
        assert_eq!(cl.noise_rate[2], 0.0);
        assert_eq!(cl.class_counts, vec![3, 2, 1]);
    }

    #[test]
    fn normalized_margin_reorders() {
        // Margins: row 2: (0.1 - 0.85 + 1) / 2 = 0.125; row 4: (0.2 - 0.55 + 1) / 2 = 0.325.
        let cl = confident_learning(&P, 3, &Y, RankBy::NormalizedMargin).unwrap();
        assert!((cl.issues[0].score - 0.125).abs() < 1e-6);
        assert!((cl.issues[1].score - 0.325).abs() < 1e-6);
    }

    #[test]
    fn several_confident_classes_take_the_most_probable() {
        // Thresholds: class 0 = (0.55 + 0.45) / 2 = 0.5 (rows 0, 1); class 1 = 0.3 (row 2).
        // row 0 (given 0), p = .55 .45: both reach their thresholds, 0 is more probable -> (0, 0).
        // row 1 (given 0), p = .45 .55: only class 1 reaches its threshold -> (0, 1), score .45.
        // row 2 (given 1), p = .7 .3: both reach theirs, 0 is more probable -> (1, 0), score .3.
        let p = [0.55f32, 0.45, 0.45, 0.55, 0.7, 0.3];
        let cl = confident_learning(&p, 2, &[0, 0, 1], RankBy::SelfConfidence).unwrap();
        assert_eq!(cl.confident_joint, vec![vec![1, 1], vec![1, 0]]);
        let got: Vec<(usize, usize)> = cl.issues.iter().map(|i| (i.index, i.suggested)).collect();
        assert_eq!(got, vec![(2, 0), (1, 1)]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            confident_learning(&P[..17], 3, &Y, RankBy::SelfConfidence),
            Err(AuditError::Shape { .. })
        ));
        assert!(matches!(
            confident_learning(&P, 3, &[0, 0, 0, 1, 1, 3], RankBy::SelfConfidence),
            Err(AuditError::LabelOutOfRange { row: 5, .. })
        ));
        let mut bad = P;
        bad[7] = f32::NAN;
        assert!(matches!(
            confident_learning(&bad, 3, &Y, RankBy::SelfConfidence),
            Err(AuditError::NonFinite { row: 2, .. })
        ));
    }
}
