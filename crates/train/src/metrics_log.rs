//! The metrics file: `<output_dir>/metrics.jsonl`, one JSON object per logged step
//! (`"kind": "train"`) and per evaluation (`"kind": "eval"`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use loraplus_data::{MetricReport, Split, EVAL_LOSS};

pub const METRICS_FILE: &str = "metrics.jsonl";

/// One logged training step (averages over the steps since the previous log line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainRecord {
    pub step: usize,
    pub epoch: u64,
    pub loss: f64,
    pub lr_a: f64,
    pub lr_b: f64,
    pub grad_norm: Option<f64>,
    pub samples_per_s: f64,
    pub elapsed_s: f64,
}

/// One evaluation: every metric of every dev split, and the main one (selection key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    pub step: usize,
    /// JSON has no NaN: a non-finite value is written `null` and read back as NaN.
    #[serde(deserialize_with = "nan_if_null")]
    pub main: f64,
    pub main_name: String,
    #[serde(deserialize_with = "nan_if_null_values")]
    pub metrics: Vec<(String, f64)>,
    /// The training objective on the first (selecting) split, per example; absent in files
    /// written before it was logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    pub elapsed_s: f64,
}

impl EvalRecord {
    pub fn new(step: usize, reports: &[(Split, MetricReport)], elapsed_s: f64) -> EvalRecord {
        let mut metrics = Vec::new();
        let several = reports.len() > 1;
        for (split, r) in reports {
            for (name, v) in &r.values {
                let key = if several {
                    format!("{split:?}/{name}")
                } else {
                    name.clone()
                };
                metrics.push((key, *v));
            }
        }
        let (main, main_name, loss) = reports
            .first()
            .map(|(_, r)| (r.main, r.main_name.clone(), r.loss))
            .unwrap_or((f64::NAN, String::new(), None));
        EvalRecord {
            step,
            main,
            main_name,
            metrics,
            loss,
            elapsed_s,
        }
    }

    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        if let (Some(l), false) = (self.loss, self.metrics.iter().any(|(k, _)| k == EVAL_LOSS)) {
            parts.push(format!("{EVAL_LOSS} {l:.4}"));
        }
        parts.join(", ")
    }
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nan_if_null_values<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, f64)>, D::Error> {
    Ok(Vec::<(String, Option<f64>)>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Train(TrainRecord),
    Eval(EvalRecord),
}

/// Appends records to `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Open (truncate, or append when resuming) `<output_dir>/metrics.jsonl`.
    pub fn open(output_dir: &Path, append: bool) -> Result<MetricsLog> {
        std::fs::create_dir_all(output_dir)
            .with_context(|| format!("creating {}", output_dir.display()))?;
        let path = output_dir.join(METRICS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsLog { path, file })
    }

    /// Open `<output_dir>/metrics.jsonl` for a run resumed at `step`, to append to it: the
    /// records of later steps (left by the run after its checkpoint, or by an abandoned
    /// continuation of it) are dropped first, so the file reads as one run, and so are
    /// evaluations at `step` itself when the resumed run `reevaluates` there (resumed at its
    /// end, it only evaluates). A line that does not parse (cut off by a kill) is dropped too.
    pub fn resume(output_dir: &Path, step: usize, reevaluates: bool) -> Result<MetricsLog> {
        let path = output_dir.join(METRICS_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let keep = |line: &str| match serde_json::from_str::<Record>(line) {
                Ok(Record::Train(t)) => t.step <= step,
                Ok(Record::Eval(e)) => e.step < step || (e.step == step && !reevaluates),
                Err(_) => false,
            };
            let kept: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
            if kept.len() != text.lines().count() {
                let tmp = output_dir.join(format!(".{METRICS_FILE}.tmp"));
                let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
                std::fs::write(&tmp, body)
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .with_context(|| format!("rewriting {}", path.display()))?;
                tracing::info!(
                    "{}: dropped {} record(s) past the checkpoint's step {step}",
                    path.display(),
                    text.lines().count() - kept.len()
                );
            }
        }
        MetricsLog::open(output_dir, true)
    }

    fn write(&mut self, r: &Record) -> Result<()> {
        let line = serde_json::to_string(r)?;
        writeln!(self.file, "{line}").with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn train(&mut self, r: &TrainRecord) -> Result<()> {
        self.write(&Record::Train(r.clone()))
    }

    pub fn eval(&mut self, r: &EvalRecord) -> Result<()> {
        self.write(&Record::Eval(r.clone()))
    }
}

/// Read a metrics file back (for plots and reports).
pub fn read(path: &Path) -> Result<(Vec<TrainRecord>, Vec<EvalRecord>)> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(&line)
            .with_context(|| format!("{}:{}", path.display(), i + 1))?
        {
            Record::Train(t) => train.push(t),
            Record::Eval(e) => eval.push(e),
        }
    }
    Ok((train, eval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_evaluation_is_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path(), false).unwrap();
        let rec = EvalRecord {
            step: 4,
            main: f64::NAN,
            main_name: "eval_loss".into(),
            metrics: vec![("eval_loss".into(), f64::NAN), ("other".into(), 0.5)],
            loss: None,
            elapsed_s: 1.0,
        };
        log.eval(&rec).unwrap();
        let (_, eval) = read(&dir.path().join(METRICS_FILE)).unwrap();
        assert_eq!(eval.len(), 1);
        assert!(eval[0].main.is_nan());
        assert!(eval[0].metrics[0].1.is_nan());
        assert_eq!(eval[0].metrics[1], ("other".to_string(), 0.5));
    }

    /// Resuming at step 4 keeps the records through step 4 (and the evaluation at 4 only when
    /// the run does not evaluate there again); a cut-off last line goes too.
    #[test]
    fn resume_drops_the_records_past_the_checkpoint() {
        let train = |step| TrainRecord {
            step,
            epoch: 0,
            loss: step as f64,
            lr_a: 1e-3,
            lr_b: 1e-2,
            grad_norm: None,
            samples_per_s: 1.0,
            elapsed_s: 1.0,
        };
        let eval = |step| EvalRecord {
            step,
            main: 0.5,
            main_name: "accuracy".into(),
            metrics: vec![("accuracy".into(), 0.5)],
            loss: Some(0.7),
            elapsed_s: 1.0,
        };
        let steps = |reevaluates| {
            let dir = tempfile::tempdir().unwrap();
            let mut log = MetricsLog::open(dir.path(), false).unwrap();
            for s in [2, 4, 6] {
                log.train(&train(s)).unwrap();
                log.eval(&eval(s)).unwrap();
            }
            drop(log);
            let path = dir.path().join(METRICS_FILE);
            let mut text = std::fs::read_to_string(&path).unwrap();
            text.push_str("{\"kind\":\"train\",\"st");
            std::fs::write(&path, text).unwrap();
            let mut log = MetricsLog::resume(dir.path(), 4, reevaluates).unwrap();
            log.train(&train(5)).unwrap();
            let (t, e) = read(&path).unwrap();
            let t: Vec<usize> = t.iter().map(|r| r.step).collect();
            let e: Vec<usize> = e.iter().map(|r| r.step).collect();
            (t, e)
        };
        assert_eq!(steps(false), (vec![2, 4, 5], vec![2, 4]));
        assert_eq!(steps(true), (vec![2, 4, 5], vec![2]));
    }
}
