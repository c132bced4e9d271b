//! Sequence classification and regression: a GLUE task read from `glue_dir`, or the user's own
//! CSV/TSV/JSONL files (`task = "classification"` / `"regression"`). Both become a
//! [`loraplus_data::Task`] (the user's with its own labels and metric), so reading, tokenizing,
//! batching, metrics and prediction files are one path.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tch::{Device, Tensor};

use loraplus_data::{
    eval_loss, evaluate, paths, predictions_from_logits, read_csv, read_jsonl, read_split, Batch,
    ColumnMapping, CsvOptions, DataLoader, Dataset, Encoder, Label, LoaderConfig, MetricKind,
    MetricReport, PaddingSide, Position, ReadOptions, Split, Task, TokenizedDataset,
};
use loraplus_models::Head;

use crate::config::TrainConfig;
use crate::model::{self, Model};
use crate::task::TrainTask;

/// Where the examples come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `<glue_dir>/<task folder>/{train,dev}.tsv`.
    Glue { glue_dir: PathBuf },
    /// The user's files, read through `mapping`.
    Files {
        train: Option<PathBuf>,
        eval: Option<PathBuf>,
        mapping: ColumnMapping,
    },
}

/// A sequence classification or regression task.
#[derive(Debug, Clone)]
pub struct SequenceTask {
    pub task: Task,
    pub source: Source,
}

/// The file format a path's extension says: CSV, TSV or JSON Lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    Tsv,
    Jsonl,
}

impl FileFormat {
    /// From the extension (`.csv`, `.tsv`, `.jsonl` / `.json`).
    pub fn of(path: &Path) -> Result<FileFormat> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(FileFormat::Csv),
            Some("tsv") => Ok(FileFormat::Tsv),
            Some("jsonl") | Some("json") => Ok(FileFormat::Jsonl),
            _ => bail!(
                "{}: unknown data file type; expected a .csv, .tsv or .jsonl file",
                path.display()
            ),
        }
    }
}

/// How strictly the readers take rows (`skip_malformed`).
pub fn read_options(cfg: &TrainConfig) -> ReadOptions {
    ReadOptions {
        skip_malformed: cfg.skip_malformed,
    }
}

/// Read one of the user's files through `mapping`; rows skipped under `skip_malformed` are
/// warned about.
pub fn read_user_file(path: &Path, mapping: &ColumnMapping, opts: ReadOptions) -> Result<Dataset> {
    let ds = read_quietly(path, mapping, opts)?;
    warn_skipped(&path.display().to_string(), &ds);
    Ok(ds)
}

fn read_quietly(path: &Path, mapping: &ColumnMapping, opts: ReadOptions) -> Result<Dataset> {
    Ok(match FileFormat::of(path)? {
        FileFormat::Csv => read_csv(path, mapping, CsvOptions::default(), opts)?,
        FileFormat::Tsv => read_csv(path, mapping, CsvOptions { delimiter: b'\t' }, opts)?,
        FileFormat::Jsonl => read_jsonl(path, mapping, opts)?,
    })
}

/// Rows skipped under `skip_malformed`: how many, and the first few with their reasons.
fn warn_skipped(origin: &str, ds: &Dataset) {
    if ds.skipped.is_empty() {
        return;
    }
    let first: Vec<String> = ds
        .skipped
        .iter()
        .take(3)
        .map(|r| format!("line {}: {}", r.line, r.reason))
        .collect();
    tracing::warn!(
        "{origin}: skipped {} malformed row(s) of {} (skip_malformed); first: {}",
        ds.skipped.len(),
        ds.skipped.len() + ds.len(),
        first.join("; ")
    );
}

/// The label of one JSON line, or why it has none.
fn json_label(line: &[u8], column: &str) -> std::result::Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not valid JSON ({e})"))?;
    match v.get(column) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
        Some(other) => Err(format!(
            "field {column:?} is {other}, expected a label (string, number or boolean)"
        )),
        None => Err(format!("missing field {column:?} (the label column)")),
    }
}

/// The distinct values of the label column of `path`, as text, sorted (numerically when every
/// value is an integer, so integer labels 0..n-1 keep their ids). With `opts.skip_malformed`,
/// rows without a usable label are left out.
pub fn discover_labels(path: &Path, column: &str, opts: ReadOptions) -> Result<Vec<String>> {
    let values: Vec<String> = match FileFormat::of(path)? {
        FileFormat::Jsonl => {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let mut out = Vec::new();
            let text = loraplus_data::reader::strip_bom(&text);
            for (i, line) in text.split(|&b| b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match json_label(line, column) {
                    Ok(label) => out.push(label),
                    Err(_) if opts.skip_malformed => {}
                    Err(reason) => bail!(
                        "{}: line {}: {reason} (skip_malformed skips such rows)",
                        path.display(),
                        i + 1
                    ),
                }
            }
            out
        }
        // The run reads the file again and says what it skipped then.
        _ => read_quietly(path, &ColumnMapping::single(column), opts)?
            .examples
            .into_iter()
            .map(|e| e.text_a)
            .collect(),
    };
    if values.is_empty() {
        bail!("{}: no rows, so no labels to learn", path.display());
    }
    // The readers compare labels trimmed (`text, pos` is the label "pos").
    let distinct: BTreeSet<String> = values.into_iter().map(|v| v.trim().to_string()).collect();
    let mut labels: Vec<String> = distinct.into_iter().collect();
    if labels.iter().all(|l| l.parse::<i64>().is_ok()) {
        labels.sort_by_key(|l| l.parse::<i64>().unwrap_or(0));
    }
    if labels.len() < 2 {
        bail!(
            "{}: the label column {column:?} has {} distinct value(s) ({labels:?}); classification needs at least 2 (or give `labels`)",
            path.display(),
            labels.len()
        );
    }
    Ok(labels)
}

fn metric_of(name: Option<&str>, regression: bool) -> Result<MetricKind> {
    Ok(match (name, regression) {
        (None, true) => MetricKind::PearsonSpearman,
        (None, false) | (Some("accuracy"), false) => MetricKind::Accuracy,
        (Some("f1"), false) => MetricKind::F1Accuracy,
        (Some("matthews") | Some("mcc"), false) => MetricKind::Matthews,
        (Some(other), true) => bail!(
            "field `metric` ({other:?}) is for classification: a regression reports pearson and spearman, and selects checkpoints, stops early and meets target_metric by combined_score, their mean (as GLUE's STS-B); leave `metric` out"
        ),
        (Some(other), false) => bail!(
            "field `metric` must be accuracy, f1 (binary) or matthews (binary), found {other:?}"
        ),
    })
}

impl SequenceTask {
    /// A GLUE task (`cfg.task` a GLUE name) or the user's files (`classification` / `regression`).
    pub fn from_config(cfg: &TrainConfig) -> Result<SequenceTask> {
        let kind = cfg.task.as_str();
        if kind != "classification" && kind != "regression" {
            let task = Task::from_name(kind).with_context(|| {
                "field `task` (or a task kind: classification, regression, causal-lm)".to_string()
            })?;
            return Ok(SequenceTask {
                task,
                source: Source::Glue {
                    glue_dir: cfg.glue_dir.clone().unwrap_or_else(paths::glue_dir),
                },
            });
        }
        let regression = kind == "regression";
        let train = cfg.train_file.clone();
        let eval = cfg.eval_file.clone();
        let labels = match (&cfg.labels, regression) {
            (Some(l), false) => l.clone(),
            (Some(_), true) => bail!("field `labels`: a regression task has no class labels"),
            (None, true) => Vec::new(),
            (None, false) => {
                let from = train.as_ref().or(eval.as_ref()).context(
                    "task = \"classification\" needs `train_file` (or `eval_file`) to read the labels from, or `labels`",
                )?;
                discover_labels(from, &cfg.label_column, read_options(cfg))?
            }
        };
        let metric = metric_of(cfg.metric.as_deref(), regression)?;
        let task = Task::user(kind, &labels, metric)?;
        let base = match &cfg.text_pair_column {
            Some(b) => ColumnMapping::pair(&cfg.text_column, b),
            None => ColumnMapping::single(&cfg.text_column),
        };
        let mapping = if regression {
            base.with_score(&cfg.label_column)
        } else {
            base.with_classes(&cfg.label_column, &labels)
        };
        Ok(SequenceTask {
            task,
            source: Source::Files {
                train,
                eval,
                mapping,
            },
        })
    }

    fn encoder(cfg: &TrainConfig, model_dir: &Path) -> Result<Encoder> {
        Encoder::from_model_dir(model_dir, cfg.max_seq_len())
    }

    fn tokenize(ds: &Dataset, encoder: &Encoder) -> Result<Arc<TokenizedDataset>> {
        let (tok, _status) = encoder.encode_cached(ds, &paths::cache_dir())?;
        Ok(Arc::new(tok))
    }

    /// Read and tokenize one split (`Split::Train`, a dev split, or `Split::Test`).
    pub fn load_split(
        &self,
        cfg: &TrainConfig,
        model_dir: &Path,
        split: Split,
    ) -> Result<Arc<TokenizedDataset>> {
        let encoder = Self::encoder(cfg, model_dir)?;
        let ds = match &self.source {
            Source::Glue { glue_dir } => {
                let ds = read_split(glue_dir, self.task, split, read_options(cfg))?;
                warn_skipped(&format!("{} {split:?}", self.task.name), &ds);
                ds
            }
            Source::Files {
                train,
                eval,
                mapping,
            } => {
                let path = match split {
                    Split::Train => train
                        .as_ref()
                        .context("field `train_file` is required to train on your own data")?,
                    _ => eval.as_ref().context("field `eval_file` is not set")?,
                };
                read_user_file(path, mapping, read_options(cfg))?
            }
        };
        Self::tokenize(&ds, &encoder)
    }

    /// Predictions (and gold labels where present) for one split, in file order.
    pub fn predict(
        &self,
        model: &Model,
        data: &Arc<TokenizedDataset>,
        pad_id: u32,
        cfg: &TrainConfig,
        device: Device,
    ) -> Result<(Vec<Label>, Vec<Option<Label>>)> {
        let (_, preds, gold) = self.predict_with_logits(model, data, pad_id, cfg, device)?;
        Ok((preds, gold))
    }

    /// As [`Self::predict`], with each row's logits (f32, one per class, or the score).
    #[allow(clippy::type_complexity)]
    pub fn predict_with_logits(
        &self,
        model: &Model,
        data: &Arc<TokenizedDataset>,
        pad_id: u32,
        cfg: &TrainConfig,
        device: Device,
    ) -> Result<(Vec<Vec<f32>>, Vec<Label>, Vec<Option<Label>>)> {
        let loader = DataLoader::new(
            data.clone(),
            pad_id,
            LoaderConfig::eval(cfg.eval_batch_size),
        )?;
        let _guard = tch::no_grad_guard();
        let mut rows = Vec::with_capacity(data.len());
        let mut preds = Vec::with_capacity(data.len());
        let mut gold = Vec::with_capacity(data.len());
        for batch in loader.prefetch(Position::default())? {
            let batch = batch?;
            let logits = model::eval_logits(model, &batch, device)?
                .to_device(Device::Cpu)
                .to_kind(tch::Kind::Float);
            let width = logits.size().get(1).copied().unwrap_or(1);
            let flat = Vec::<f32>::try_from(&logits.reshape([-1]))?;
            rows.extend(flat.chunks(width as usize).map(<[f32]>::to_vec));
            preds.extend(predictions_from_logits(self.task, &logits)?);
            gold.extend(batch.indices.iter().map(|&i| data.labels().get(i)));
        }
        Ok((rows, preds, gold))
    }

    /// A prediction as GLUE's submission files write it (label name, or the score).
    pub fn label_text(&self, label: &Label) -> String {
        match label {
            Label::Class(i) => self
                .task
                .labels
                .get(*i)
                .map_or(i.to_string(), |s| s.to_string()),
            Label::Score(s) => format!("{s:.3}"),
        }
    }
}

impl TrainTask for SequenceTask {
    fn name(&self) -> String {
        self.task.name.to_string()
    }

    fn head(&self) -> Head {
        Head::SequenceClassification {
            num_labels: self.task.num_labels() as i64,
        }
    }

    fn load_train(&self, cfg: &TrainConfig, model_dir: &Path) -> Result<Arc<TokenizedDataset>> {
        self.load_split(cfg, model_dir, Split::Train)
    }

    fn load_evals(
        &self,
        cfg: &TrainConfig,
        model_dir: &Path,
    ) -> Result<Vec<(Split, Arc<TokenizedDataset>)>> {
        let splits = match &self.source {
            Source::Glue { .. } => self.task.dev_splits(),
            Source::Files { eval: None, .. } => Vec::new(),
            Source::Files { eval: Some(_), .. } => vec![Split::Dev],
        };
        splits
            .into_iter()
            .map(|s| Ok((s, self.load_split(cfg, model_dir, s)?)))
            .collect()
    }

    fn padding(&self, cfg: &TrainConfig, model_dir: &Path) -> Result<(u32, PaddingSide)> {
        let tokenizer_pad = Self::encoder(cfg, model_dir)?.pad_id();
        Ok((
            crate::model::batch_pad_id(model_dir, tokenizer_pad)?,
            PaddingSide::Right,
        ))
    }

    /// The row-major logits of the batch (`[rows, classes]`, or `[rows, 1]` for a regression).
    fn eval_batch(&self, model: &Model, batch: &Batch, device: Device) -> Result<Vec<f64>> {
        let logits = model::eval_logits(model, batch, device)?
            .to_device(Device::Cpu)
            .to_kind(tch::Kind::Float);
        let flat = Vec::<f32>::try_from(&logits.reshape([-1]))?;
        Ok(flat.into_iter().map(f64::from).collect())
    }

    fn eval_report(
        &self,
        data: &TokenizedDataset,
        batches: &[Vec<usize>],
        outputs: &[Vec<f64>],
    ) -> Result<MetricReport> {
        // Classes, or 1 for a regression.
        let width = self.task.num_labels();
        let mut logits = Vec::new();
        let mut gold = Vec::new();
        for (b, (indices, out)) in batches.iter().zip(outputs).enumerate() {
            if out.len() != indices.len() * width {
                bail!(
                    "evaluation batch {b}: {} logits for {} rows of {width}",
                    out.len(),
                    indices.len()
                );
            }
            // f32 logits carried in f64: the cast back is exact.
            logits.extend(out.iter().map(|&v| v as f32));
            for &i in indices {
                gold.push(data.labels().get(i).with_context(|| {
                    format!("example {i} of this split has no label to evaluate against")
                })?);
            }
        }
        let logits = Tensor::f_from_slice(&logits)?.f_reshape([gold.len() as i64, width as i64])?;
        let preds = predictions_from_logits(self.task, &logits)?;
        let loss = eval_loss(self.task, &logits, &gold)?;
        Ok(evaluate(self.task, &preds, &gold)?.with_loss(loss))
    }

    fn merged_architecture(&self, model_type: &str) -> String {
        format!(
            "{}ForSequenceClassification",
            model::class_prefix(model_type)
        )
    }

    fn merged_config(&self, obj: &mut serde_json::Map<String, serde_json::Value>) {
        let spec = self.task.spec();
        let labels: Vec<String> = if spec.is_regression() {
            vec!["LABEL_0".into()]
        } else {
            spec.labels.iter().map(|s| s.to_string()).collect()
        };
        let id2label: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone().into()))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i.into()))
            .collect();
        obj.insert("num_labels".into(), spec.num_labels().into());
        obj.insert("id2label".into(), id2label.into());
        obj.insert("label2id".into(), label2id.into());
        let problem = if spec.is_regression() {
            "regression"
        } else {
            "single_label_classification"
        };
        obj.insert("problem_type".into(), problem.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovered_labels_are_the_values_the_readers_compare() {
        let dir = tempfile::tempdir().unwrap();
        // `text, pos`: the label is "pos", as the reader trims it.
        let csv = dir.path().join("spaced.csv");
        std::fs::write(&csv, "text,label\ngood, pos\nbad, neg\nfine,pos\n").unwrap();
        assert_eq!(
            discover_labels(&csv, "label", ReadOptions::default()).unwrap(),
            ["neg", "pos"]
        );
        // A byte-order mark, as read_jsonl accepts.
        let jsonl = dir.path().join("bom.jsonl");
        std::fs::write(
            &jsonl,
            b"\xEF\xBB\xBF{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 0}\n",
        )
        .unwrap();
        assert_eq!(
            discover_labels(&jsonl, "label", ReadOptions::default()).unwrap(),
            ["0", "1"]
        );
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "\n").unwrap();
        let e = format!(
            "{:#}",
            discover_labels(&empty, "label", ReadOptions::default()).unwrap_err()
        );
        assert!(e.contains("empty.jsonl") && e.contains("no rows"), "{e}");
    }

    /// Batches pad with config.json's pad_token_id (what the decoders' score head skips and
    /// RoBERTa's positions count from) where it is a token of the vocabulary, else with the
    /// tokenizer's (MiniLM's tokenizer.json pads with 0).
    #[test]
    fn batches_pad_with_the_configs_pad_token_id() {
        let minilm = paths::model_dir();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            minilm.join("tokenizer.json"),
            dir.path().join("tokenizer.json"),
        )
        .unwrap();
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(minilm.join("config.json")).unwrap())
                .unwrap();
        let cfg = TrainConfig {
            task: "sst2".into(),
            ..TrainConfig::default()
        };
        let task = SequenceTask::from_config(&cfg).unwrap();
        for (pad, want) in [
            (serde_json::json!(3), 3),
            (serde_json::json!(null), 0),
            (serde_json::json!(10_000_000), 0),
        ] {
            config["pad_token_id"] = pad.clone();
            std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
            let (id, side) = task.padding(&cfg, dir.path()).unwrap();
            assert_eq!((id, side), (want, PaddingSide::Right), "pad_token_id {pad}");
        }
    }

    #[test]
    fn skip_malformed_leaves_bad_rows_out_and_strict_reading_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("t.csv");
        std::fs::write(&csv, "text,label\ngood,pos\nno label here\nbad,neg\n").unwrap();
        let jsonl = dir.path().join("t.jsonl");
        std::fs::write(
            &jsonl,
            "{\"text\": \"a\", \"label\": \"pos\"}\n{\"text\": \"b\"}\n{\"text\": \"c\", \"label\": \"neg\"}\n",
        )
        .unwrap();
        let skip = ReadOptions {
            skip_malformed: true,
        };
        for (path, line) in [(&csv, "line 3"), (&jsonl, "line 2")] {
            let e = format!(
                "{:#}",
                discover_labels(path, "label", ReadOptions::default()).unwrap_err()
            );
            assert!(e.contains(line) && e.contains("skip_malformed"), "{e}");
            assert_eq!(
                discover_labels(path, "label", skip).unwrap(),
                ["neg", "pos"]
            );
            let mapping = ColumnMapping::single("text").with_classes("label", &["neg", "pos"]);
            let e = format!(
                "{:#}",
                read_user_file(path, &mapping, ReadOptions::default()).unwrap_err()
            );
            assert!(e.contains(line) && e.contains("skip_malformed"), "{e}");
            let ds = read_user_file(path, &mapping, skip).unwrap();
            let texts: Vec<&str> = ds.examples.iter().map(|e| e.text_a.as_str()).collect();
            assert_eq!(texts.len(), 2, "{texts:?}");
            assert_eq!(ds.skipped.len(), 1);
            assert_eq!(ds.skipped[0].line, if path == &csv { 3 } else { 2 });
        }
    }
}
