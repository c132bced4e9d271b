//! GLUE metrics, equal to scikit-learn / scipy (tested in `tests/metrics_parity.rs`), and the
//! per-task report used for evaluation and checkpoint selection.
//!
//! | task | metrics (names as HF `evaluate`'s `glue`) | [`MetricReport::main`] |
//! |---|---|---|
//! | CoLA | `matthews_correlation` | it |
//! | SST-2, QNLI, RTE, WNLI | `accuracy` | it |
//! | MNLI | `accuracy` (matched), `accuracy_mm` (mismatched) via [`evaluate_mnli`] | their mean |
//! | MRPC, QQP | `f1` (class 1 positive), `accuracy` | their mean |
//! | STS-B | `pearson`, `spearmanr` | their mean |
//!
//! When a task has several metrics the main one is their mean, HuggingFace `run_glue.py`'s
//! `combined_score` (and the GLUE leaderboard's rule for averaging a task's metrics).
//!
//! Degenerate inputs follow scikit-learn where it defines a value, and are defined here where
//! scipy gives NaN:
//! - MCC is 0 when predictions or labels are constant (as `sklearn.metrics.matthews_corrcoef`).
//! - F1 is 0 when there are no true positives (as sklearn's `zero_division` default).
//! - Pearson and Spearman are **0** when either input is constant, where scipy returns NaN
//!   with a `ConstantInputWarning`: a constant predictor carries no correlation, and a NaN would
//!   poison checkpoint selection (`NaN > x` is always false). Otherwise they equal scipy's
//!   `pearsonr` / `spearmanr` (average ranks for ties) to within 1e-12.
//!
//! All sums are in f64.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::reader::Label;
use crate::task::{MetricKind, Task};

fn check_lengths(what: &str, a: usize, b: usize) -> Result<()> {
    if a != b {
        bail!("{what}: {a} predictions for {b} labels");
    }
    if a == 0 {
        bail!("{what}: no predictions");
    }
    Ok(())
}

/// Fraction of predictions equal to the labels.
pub fn accuracy(preds: &[usize], labels: &[usize]) -> Result<f64> {
    check_lengths("accuracy", preds.len(), labels.len())?;
    let right = preds.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok(right as f64 / preds.len() as f64)
}

/// Binary F1 with class 1 as the positive class; 0 when there is no true positive.
pub fn f1_binary(preds: &[usize], labels: &[usize]) -> Result<f64> {
    check_lengths("f1", preds.len(), labels.len())?;
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for (&p, &l) in preds.iter().zip(labels) {
        match (p == 1, l == 1) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    if tp == 0 {
        return Ok(0.0);
    }
    Ok(2.0 * tp as f64 / (2 * tp + fp + fn_) as f64)
}

/// Matthews correlation coefficient, multiclass as in sklearn (Gorodkin's R_K); 0 when
/// predictions or labels are constant.
pub fn matthews_corrcoef(preds: &[usize], labels: &[usize]) -> Result<f64> {
    check_lengths("matthews_corrcoef", preds.len(), labels.len())?;
    // Per class: (count among labels, count among predictions). A map, not a dense vector, so
    // that an absurd class id costs nothing.
    let mut sums: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    let mut correct = 0f64;
    for (&p, &l) in preds.iter().zip(labels) {
        sums.entry(l).or_default().0 += 1.0;
        sums.entry(p).or_default().1 += 1.0;
        if p == l {
            correct += 1.0;
        }
    }
    let n = preds.len() as f64;
    let t_dot_p: f64 = sums.values().map(|(t, p)| t * p).sum();
    let p_dot_p: f64 = sums.values().map(|(_, p)| p * p).sum();
    let t_dot_t: f64 = sums.values().map(|(t, _)| t * t).sum();
    let cov_ytyp = correct * n - t_dot_p;
    let cov_ypyp = n * n - p_dot_p;
    let cov_ytyt = n * n - t_dot_t;
    if cov_ypyp * cov_ytyt == 0.0 {
        return Ok(0.0);
    }
    Ok(cov_ytyp / (cov_ytyt * cov_ypyp).sqrt())
}

fn check_finite(what: &str, x: &[f64]) -> Result<()> {
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        bail!("{what}: value {i} is {}, not a finite number", x[i]);
    }
    Ok(())
}

/// Pearson correlation, computed as scipy's `pearsonr` (centered, scaled, normalized, clipped to
/// [-1, 1]); 0 when either input is constant (scipy: NaN). Needs at least 2 values.
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64> {
    check_lengths("pearson", x.len(), y.len())?;
    if x.len() < 2 {
        bail!("pearson: needs at least 2 values, got {}", x.len());
    }
    check_finite("pearson predictions", x)?;
    check_finite("pearson labels", y)?;
    if x.iter().all(|&v| v == x[0]) || y.iter().all(|&v| v == y[0]) {
        return Ok(0.0);
    }
    let center = |v: &[f64]| -> Vec<f64> {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let c: Vec<f64> = v.iter().map(|a| a - mean).collect();
        // Scale by the largest magnitude first (scipy does, against overflow), then normalize.
        let max = c.iter().fold(0f64, |m, a| m.max(a.abs()));
        let scaled: Vec<f64> = c.iter().map(|a| a / max).collect();
        let norm = scaled.iter().map(|a| a * a).sum::<f64>().sqrt();
        scaled.iter().map(|a| a / norm).collect()
    };
    let (xs, ys) = (center(x), center(y));
    let r: f64 = xs.iter().zip(&ys).map(|(a, b)| a * b).sum();
    Ok(r.clamp(-1.0, 1.0))
}

/// Ranks 1..n, ties getting the average of their ranks (scipy `rankdata(method="average")`).
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0f64; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && x[order[j]] == x[order[i]] {
            j += 1;
        }
        // Positions i..j (0-based) hold ranks i+1..=j: their average is (i + 1 + j) / 2.
        let avg = (i + 1 + j) as f64 / 2.0;
        for &k in &order[i..j] {
            ranks[k] = avg;
        }
        i = j;
    }
    ranks
}

/// Spearman rank correlation: Pearson of the average ranks; 0 when either input is constant
/// (scipy: NaN).
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    check_lengths("spearman", x.len(), y.len())?;
    check_finite("spearman predictions", x)?;
    check_finite("spearman labels", y)?;
    pearson(&average_ranks(x), &average_ranks(y))
}

/// The scores of one evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricReport {
    /// Canonical task name.
    pub task: String,
    /// Metric name to value (`accuracy`, `f1`, `matthews_correlation`, `pearson`, `spearmanr`,
    /// `accuracy_mm`).
    pub values: BTreeMap<String, f64>,
    /// Name of the main metric: the single metric, or `combined_score` (the mean of several).
    pub main_name: String,
    /// The value to select checkpoints by; higher is better.
    pub main: f64,
    /// The training objective on the set, per example ([`eval_loss`]; a causal LM's token
    /// loss), when the caller had the model outputs. Never part of `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
}

impl MetricReport {
    fn new(task: Task, values: BTreeMap<String, f64>) -> MetricReport {
        let (main_name, main) = if values.len() == 1 {
            let (k, v) = values
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), *v))
                .unwrap_or_default();
            (k, v)
        } else {
            let mean = values.values().sum::<f64>() / values.len() as f64;
            ("combined_score".to_string(), mean)
        };
        MetricReport {
            task: task.name.to_string(),
            values,
            main_name,
            main,
            loss: None,
        }
    }

    /// The same report with its evaluation loss.
    pub fn with_loss(self, loss: f64) -> MetricReport {
        MetricReport {
            loss: Some(loss),
            ..self
        }
    }

    /// A metric by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }
}

impl std::fmt::Display for MetricReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.task)?;
        for (k, v) in &self.values {
            write!(f, " {k}={v:.4}")?;
        }
        if self.values.len() > 1 {
            write!(f, " ({}={:.4})", self.main_name, self.main)?;
        }
        if let (Some(l), false) = (self.loss, self.values.contains_key(EVAL_LOSS)) {
            write!(f, " {EVAL_LOSS}={l:.4}")?;
        }
        Ok(())
    }
}

fn classes(task: Task, what: &str, labels: &[Label]) -> Result<Vec<usize>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| match *l {
            Label::Class(c) if c < task.num_labels() => Ok(c),
            Label::Class(c) => bail!(
                "{task}: {what} {i} is class {c}, but the task has {} classes",
                task.num_labels()
            ),
            Label::Score(_) => bail!("{task}: {what} {i} is a score; the task has classes"),
        })
        .collect()
}

fn scores(task: Task, what: &str, labels: &[Label]) -> Result<Vec<f64>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| match *l {
            Label::Score(s) => Ok(f64::from(s)),
            Label::Class(_) => bail!("{task}: {what} {i} is a class; the task is a regression"),
        })
        .collect()
}

/// Score predictions against gold labels with the task's official metric. For MNLI this is the
/// accuracy of one dev file; use [`evaluate_mnli`] for both.
pub fn evaluate(task: Task, preds: &[Label], gold: &[Label]) -> Result<MetricReport> {
    check_lengths(task.name, preds.len(), gold.len())?;
    let mut values = BTreeMap::new();
    if task.is_regression() {
        let (p, g) = (
            scores(task, "prediction", preds)?,
            scores(task, "label", gold)?,
        );
        values.insert("pearson".to_string(), pearson(&p, &g)?);
        values.insert("spearmanr".to_string(), spearman(&p, &g)?);
    } else {
        let (p, g) = (
            classes(task, "prediction", preds)?,
            classes(task, "label", gold)?,
        );
        match task.metric {
            MetricKind::Accuracy => {
                values.insert("accuracy".to_string(), accuracy(&p, &g)?);
            }
            MetricKind::Matthews => {
                values.insert(
                    "matthews_correlation".to_string(),
                    matthews_corrcoef(&p, &g)?,
                );
            }
            MetricKind::F1Accuracy => {
                values.insert("f1".to_string(), f1_binary(&p, &g)?);
                values.insert("accuracy".to_string(), accuracy(&p, &g)?);
            }
            MetricKind::PearsonSpearman => {
                bail!("{task}: correlation metrics need a regression task")
            }
        }
    }
    Ok(MetricReport::new(task, values))
}

/// MNLI on both dev files: `accuracy` (matched), `accuracy_mm` (mismatched, HF's `_mm` suffix);
/// main = their mean.
pub fn evaluate_mnli(
    matched: (&[Label], &[Label]),
    mismatched: (&[Label], &[Label]),
) -> Result<MetricReport> {
    let task = Task::from_name("MNLI")?;
    let m = evaluate(task, matched.0, matched.1).context("MNLI matched")?;
    let mm = evaluate(task, mismatched.0, mismatched.1).context("MNLI mismatched")?;
    let mut values = BTreeMap::new();
    values.insert("accuracy".to_string(), m.main);
    values.insert("accuracy_mm".to_string(), mm.main);
    Ok(MetricReport::new(task, values))
}

/// Model outputs of the shape the task gives: `[B]` scores of a regression (`[B, 1]` squeezed),
/// or `[B, C]` logits of a C-class task; any other shape is an error naming the expected one.
fn checked_outputs(task: Task, logits: Tensor) -> Result<Tensor> {
    let size = logits.size();
    match size.as_slice() {
        [_] if task.is_regression() => Ok(logits),
        [_, 1] if task.is_regression() => Ok(logits.f_squeeze_dim(1)?),
        _ if task.is_regression() => {
            bail!("{task}: regression outputs must be [B] or [B, 1], got {size:?}")
        }
        [_, c] if *c == task.num_labels() as i64 => Ok(logits),
        _ => bail!(
            "{task}: logits must be [B, {}], got {size:?}",
            task.num_labels()
        ),
    }
}

/// The name of the evaluation loss among metrics (HF Trainer's `eval_loss`).
pub const EVAL_LOSS: &str = "eval_loss";

/// The training objective on an evaluation set, averaged over its examples (HF Trainer's
/// `eval_loss` for a sequence-classification model): cross-entropy of `[B, C]` logits against
/// the classes, or the squared error of `[B]` / `[B, 1]` scores for a regression. Computed in
/// f64. Unlike accuracy, F1 or MCC it moves while every prediction is still the majority
/// class, so it can rank short runs that the metric cannot tell apart.
pub fn eval_loss(task: Task, logits: &Tensor, gold: &[Label]) -> Result<f64> {
    let logits = logits.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
    let size = logits.size();
    let rows = size.first().copied().unwrap_or(0) as usize;
    check_lengths(task.name, rows, gold.len())?;
    let per_example = if task.is_regression() {
        let flat = checked_outputs(task, logits)?;
        let target = Tensor::f_from_slice(&scores(task, "label", gold)?)?;
        (flat - target).f_square()?
    } else {
        let logits = checked_outputs(task, logits)?;
        let classes: Vec<i64> = classes(task, "label", gold)?
            .into_iter()
            .map(|c| c as i64)
            .collect();
        let index = Tensor::f_from_slice(&classes)?.f_unsqueeze(1)?;
        logits
            .f_log_softmax(1, Kind::Double)?
            .f_gather(1, &index, false)?
            .f_neg()?
    };
    Ok(per_example.f_mean(Kind::Double)?.f_double_value(&[])?)
}

/// Model outputs to predictions: argmax over classes (`[B, C]` logits), or the score itself for
/// regression (`[B, 1]` or `[B]`).
pub fn predictions_from_logits(task: Task, logits: &Tensor) -> Result<Vec<Label>> {
    let logits = logits.f_to_device(Device::Cpu)?;
    if task.is_regression() {
        let flat = checked_outputs(task, logits)?;
        let v = Vec::<f32>::try_from(&flat.f_to_kind(Kind::Float)?)?;
        Ok(v.into_iter().map(Label::Score).collect())
    } else {
        let logits = checked_outputs(task, logits)?;
        let arg = logits.f_argmax(1, false)?;
        let v = Vec::<i64>::try_from(&arg)?;
        Ok(v.into_iter().map(|c| Label::Class(c as usize)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn small_cases() {
        assert_eq!(accuracy(&[1, 0, 1, 1], &[1, 1, 1, 0]).unwrap(), 0.5);
        // tp=2 fp=1 fn=1 -> 4/6
        assert!((f1_binary(&[1, 1, 1, 0], &[1, 1, 0, 1]).unwrap() - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(f1_binary(&[0, 0], &[0, 0]).unwrap(), 0.0);
        assert_eq!(matthews_corrcoef(&[1, 1, 1], &[0, 1, 0]).unwrap(), 0.0);
        assert_eq!(
            matthews_corrcoef(&[0, 1, 0, 1], &[0, 1, 0, 1]).unwrap(),
            1.0
        );
        assert_eq!(
            matthews_corrcoef(&[1, 0, 1, 0], &[0, 1, 0, 1]).unwrap(),
            -1.0
        );
        assert!(close(
            pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap(),
            1.0
        ));
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[2.0, 4.0, 6.0]).unwrap(), 0.0);
        assert_eq!(
            average_ranks(&[10.0, 20.0, 10.0, 5.0]),
            vec![2.5, 4.0, 2.5, 1.0]
        );
        assert!(
            (spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]).unwrap() - 0.8).abs() < 1e-12
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(accuracy(&[1], &[1, 0]).is_err());
        assert!(accuracy(&[], &[]).is_err());
        assert!(pearson(&[1.0], &[1.0]).is_err());
        assert!(pearson(&[1.0, f64::NAN], &[1.0, 2.0]).is_err());
        let sst2 = Task::from_name("sst2").unwrap();
        assert!(evaluate(sst2, &[Label::Class(2)], &[Label::Class(1)]).is_err());
        assert!(evaluate(sst2, &[Label::Score(1.0)], &[Label::Class(1)]).is_err());
    }

    #[test]
    fn reports_name_their_metrics() {
        let c = |v: &[usize]| v.iter().map(|&x| Label::Class(x)).collect::<Vec<_>>();
        let mrpc = evaluate(
            Task::from_name("mrpc").unwrap(),
            &c(&[1, 1, 0, 0]),
            &c(&[1, 0, 0, 0]),
        )
        .unwrap();
        assert_eq!(mrpc.get("accuracy"), Some(0.75));
        assert!((mrpc.get("f1").unwrap() - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(mrpc.main_name, "combined_score");
        assert!((mrpc.main - (0.75 + 2.0 / 3.0) / 2.0).abs() < 1e-15);
        let cola = evaluate(Task::from_name("cola").unwrap(), &c(&[1, 0]), &c(&[1, 0])).unwrap();
        assert_eq!(cola.main_name, "matthews_correlation");
        assert_eq!(cola.main, 1.0);
        let mnli = evaluate_mnli((&c(&[0, 1]), &c(&[0, 1])), (&c(&[2, 1]), &c(&[0, 1]))).unwrap();
        assert_eq!(mnli.get("accuracy"), Some(1.0));
        assert_eq!(mnli.get("accuracy_mm"), Some(0.5));
        assert_eq!(mnli.main, 0.75);
        let s = |v: &[f32]| v.iter().map(|&x| Label::Score(x)).collect::<Vec<_>>();
        let stsb = evaluate(
            Task::from_name("stsb").unwrap(),
            &s(&[1.0, 2.0, 3.0]),
            &s(&[1.0, 2.0, 4.0]),
        )
        .unwrap();
        assert!(close(stsb.get("spearmanr").unwrap(), 1.0));
        assert!(stsb.to_string().contains("pearson="));
    }

    #[test]
    fn logits_to_predictions() {
        let t = Task::from_name("mnli").unwrap();
        let logits = Tensor::from_slice(&[0.1f32, 0.9, 0.0, 2.0, 1.0, 3.0]).view([2, 3]);
        assert_eq!(
            predictions_from_logits(t, &logits).unwrap(),
            vec![Label::Class(1), Label::Class(2)]
        );
        assert!(predictions_from_logits(t, &logits.view([3, 2])).is_err());
        let r = Task::from_name("stsb").unwrap();
        let out = Tensor::from_slice(&[1.5f32, 2.5]).view([2, 1]);
        assert_eq!(
            predictions_from_logits(r, &out).unwrap(),
            vec![Label::Score(1.5), Label::Score(2.5)]
        );
    }

    #[test]
    fn eval_loss_is_the_training_objective_per_example() {
        let sst2 = Task::from_name("sst2").unwrap();
        // Row by row: ln(1 + e^-2) for a right call at margin 2, ln 2 at a tie, ln(1 + e^3).
        let logits = Tensor::from_slice(&[1.0f32, -1.0, 0.5, 0.5, 2.0, -1.0]).reshape([3, 2]);
        let gold = [Label::Class(0), Label::Class(1), Label::Class(1)];
        let want = ((1.0 + (-2.0f64).exp()).ln() + 2f64.ln() + (1.0 + 3f64.exp()).ln()) / 3.0;
        let got = eval_loss(sst2, &logits, &gold).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // libtorch's own cross-entropy (the trainer's loss) agrees.
        let ce = logits
            .to_kind(Kind::Double)
            .cross_entropy_loss::<Tensor>(
                &Tensor::from_slice(&[0i64, 1, 1]),
                None,
                tch::Reduction::Mean,
                -100,
                0.0,
            )
            .double_value(&[]);
        assert!((got - ce).abs() < 1e-12, "{got} vs {ce}");
        // A regression: mean squared error, [B] or [B, 1].
        let stsb = Task::from_name("stsb").unwrap();
        let gold = [Label::Score(1.0), Label::Score(4.5)];
        let scores = Tensor::from_slice(&[1.5f32, 2.5]);
        let want = (0.25 + 4.0) / 2.0;
        assert!((eval_loss(stsb, &scores, &gold).unwrap() - want).abs() < 1e-12);
        let got = eval_loss(stsb, &scores.reshape([2, 1]), &gold).unwrap();
        assert!((got - want).abs() < 1e-12);
        // Mismatches are errors that say what was expected.
        let e = eval_loss(sst2, &logits, &[Label::Class(0)]).unwrap_err();
        assert!(e.to_string().contains("3 predictions for 1 labels"), "{e}");
        let e = eval_loss(sst2, &logits.reshape([2, 3]), &gold).unwrap_err();
        assert!(e.to_string().contains("[B, 2]"), "{e}");
        let e = eval_loss(stsb, &logits.narrow(0, 0, 2), &gold).unwrap_err();
        assert!(e.to_string().contains("[B] or [B, 1]"), "{e}");
        // The report keeps the loss beside its metrics, out of the main value.
        let r = evaluate(sst2, &[Label::Class(0)], &[Label::Class(0)])
            .unwrap()
            .with_loss(0.25);
        assert_eq!((r.main, r.loss), (1.0, Some(0.25)));
        assert!(r.to_string().ends_with("eval_loss=0.2500"), "{r}");
    }
}
