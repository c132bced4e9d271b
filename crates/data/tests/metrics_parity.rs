//! Metrics equal scikit-learn (accuracy, F1, MCC) and scipy (Pearson, Spearman) on fixed
//! predictions, ties and constant inputs included. The reference is `reference/metrics_ref.py`,
//! run with the Python of `.venv`; where scipy answers NaN (constant input) we answer 0, as
//! documented in `src/metrics.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use loraplus_data::metrics::{accuracy, f1_binary, matthews_corrcoef, pearson, spearman};
use loraplus_data::{evaluate, Label, Task};
use serde_json::{json, Value};

const TOL: f64 = 1e-12;

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(p.exists(), "{} not found: run `make setup`", p.display());
    p
}

/// A small deterministic generator (64-bit LCG, Knuth's MMIX constants) for test data.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
    fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 31) as f64
    }
}

fn class_cases() -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut r = Lcg(7);
    let mut cases = Vec::new();
    // Random binary, mostly right (as a trained model), and a coin flip.
    let labels: Vec<usize> = (0..1000).map(|_| r.below(2)).collect();
    let preds: Vec<usize> = labels
        .iter()
        .map(|&l| if r.below(10) < 8 { l } else { 1 - l })
        .collect();
    cases.push((preds, labels.clone()));
    cases.push(((0..1000).map(|_| r.below(2)).collect(), labels.clone()));
    // Constant predictions: all positive, all negative (MCC 0; F1 > 0 and 0).
    cases.push((vec![1; 1000], labels.clone()));
    cases.push((vec![0; 1000], labels.clone()));
    // Constant labels, and both constant (F1 with no positive at all).
    cases.push((labels.clone(), vec![1; 1000]));
    cases.push((vec![0; 50], vec![0; 50]));
    // Perfect and perfectly wrong.
    cases.push((labels.clone(), labels.clone()));
    cases.push((labels.iter().map(|l| 1 - l).collect(), labels));
    // Tiny.
    cases.push((vec![1], vec![0]));
    cases.push((vec![1, 0], vec![1, 0]));
    // Three classes (MNLI-like): MCC is the multiclass R_K.
    let labels3: Vec<usize> = (0..600).map(|_| r.below(3)).collect();
    let preds3: Vec<usize> = labels3
        .iter()
        .map(|&l| if r.below(10) < 6 { l } else { r.below(3) })
        .collect();
    cases.push((preds3, labels3.clone()));
    cases.push((vec![2; 600], labels3));
    cases
}

fn score_cases() -> Vec<(Vec<f64>, Vec<f64>)> {
    let mut r = Lcg(11);
    let mut cases = Vec::new();
    // STS-B-like: gold in 0..5 on a 0.2 grid (many ties), predictions noisy.
    let gold: Vec<f64> = (0..1500).map(|_| r.below(26) as f64 * 0.2).collect();
    let pred: Vec<f64> = gold.iter().map(|g| g + (r.unit() - 0.5) * 2.0).collect();
    cases.push((pred.clone(), gold.clone()));
    // Predictions rounded to halves: ties on both sides.
    cases.push((
        pred.iter().map(|p| (p * 2.0).round() / 2.0).collect(),
        gold.clone(),
    ));
    // Heavy ties: three values only.
    cases.push((
        (0..300).map(|_| r.below(3) as f64).collect(),
        (0..300).map(|_| r.below(3) as f64).collect(),
    ));
    // Anti-correlated, exactly linear, and two points.
    cases.push((gold.iter().map(|g| 5.0 - g).collect(), gold.clone()));
    cases.push((gold.iter().map(|g| 3.0 * g + 1.0).collect(), gold.clone()));
    cases.push((vec![1.0, 2.0], vec![3.0, 1.0]));
    // Large offsets (the centering must not lose precision).
    cases.push((pred.iter().map(|p| p + 1e6).collect(), gold.clone()));
    // Constant predictions and constant labels: scipy says NaN, we say 0.
    cases.push((vec![2.5; 1500], gold.clone()));
    cases.push((pred, vec![3.0; 1500]));
    cases
}

fn reference(classes: &[(Vec<usize>, Vec<usize>)], scores: &[(Vec<f64>, Vec<f64>)]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cases.json");
    let output = dir.path().join("ref.json");
    let to_json = |p: &dyn Fn(usize) -> (Value, Value), n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| {
                let (a, b) = p(i);
                json!({"preds": a, "labels": b})
            })
            .collect()
    };
    let c = to_json(
        &|i| (json!(classes[i].0), json!(classes[i].1)),
        classes.len(),
    );
    let s = to_json(&|i| (json!(scores[i].0), json!(scores[i].1)), scores.len());
    std::fs::write(&input, json!({"classes": c, "scores": s}).to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/metrics_ref.py");
    let out = Command::new(python())
        .arg(script)
        .arg(&input)
        .arg(&output)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "metrics_ref.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(output).unwrap()).unwrap()
}

fn assert_close(what: &str, ours: f64, theirs: f64) {
    assert!(
        (ours - theirs).abs() <= TOL,
        "{what}: ours {ours:.17}, reference {theirs:.17}"
    );
}

#[test]
fn metrics_equal_sklearn_and_scipy() {
    let classes = class_cases();
    let scores = score_cases();
    let r = reference(&classes, &scores);

    for (i, (p, l)) in classes.iter().enumerate() {
        let want = &r["classes"][i];
        assert_close(
            &format!("class case {i} accuracy"),
            accuracy(p, l).unwrap(),
            want["accuracy"].as_f64().unwrap(),
        );
        assert_close(
            &format!("class case {i} mcc"),
            matthews_corrcoef(p, l).unwrap(),
            want["mcc"].as_f64().unwrap(),
        );
        if let Some(f1) = want["f1"].as_f64() {
            assert_close(&format!("class case {i} f1"), f1_binary(p, l).unwrap(), f1);
        }
    }
    // The constant-prediction cases really are degenerate in sklearn too.
    assert_eq!(r["classes"][2]["mcc"].as_f64(), Some(0.0));
    assert_eq!(r["classes"][5]["f1"].as_f64(), Some(0.0));

    let mut nan_cases = 0;
    for (i, (p, l)) in scores.iter().enumerate() {
        let want = &r["scores"][i];
        for (name, ours) in [
            ("pearson", pearson(p, l).unwrap()),
            ("spearman", spearman(p, l).unwrap()),
        ] {
            match want[name].as_f64() {
                Some(theirs) => assert_close(&format!("score case {i} {name}"), ours, theirs),
                None => {
                    // scipy: NaN for constant input; ours is defined as 0.
                    assert_eq!(ours, 0.0, "score case {i} {name}");
                    nan_cases += 1;
                }
            }
        }
    }
    assert_eq!(
        nan_cases, 4,
        "the two constant cases give NaN in scipy for both correlations"
    );
}

#[test]
fn evaluate_uses_the_official_metric_per_task() {
    let classes = class_cases();
    let (p, l) = &classes[0];
    let cl = |v: &[usize]| v.iter().map(|&x| Label::Class(x)).collect::<Vec<_>>();
    let task = |n: &str| Task::from_name(n).unwrap();

    let cola = evaluate(task("cola"), &cl(p), &cl(l)).unwrap();
    assert_eq!(cola.main, matthews_corrcoef(p, l).unwrap());
    let sst2 = evaluate(task("sst2"), &cl(p), &cl(l)).unwrap();
    assert_eq!(sst2.main, accuracy(p, l).unwrap());
    let qqp = evaluate(task("qqp"), &cl(p), &cl(l)).unwrap();
    assert_eq!(qqp.get("f1"), Some(f1_binary(p, l).unwrap()));
    assert_eq!(
        qqp.main,
        (accuracy(p, l).unwrap() + f1_binary(p, l).unwrap()) / 2.0
    );

    let scores = score_cases();
    let (sp, sl) = &scores[0];
    let sc = |v: &[f64]| {
        v.iter()
            .map(|&x| Label::Score(x as f32))
            .collect::<Vec<_>>()
    };
    let stsb = evaluate(task("stsb"), &sc(sp), &sc(sl)).unwrap();
    let (pf, lf): (Vec<f64>, Vec<f64>) = sp
        .iter()
        .zip(sl)
        .map(|(a, b)| (f64::from(*a as f32), f64::from(*b as f32)))
        .unzip();
    assert_eq!(stsb.get("pearson"), Some(pearson(&pf, &lf).unwrap()));
    assert_eq!(stsb.get("spearmanr"), Some(spearman(&pf, &lf).unwrap()));
    assert_eq!(stsb.main_name, "combined_score");
}
