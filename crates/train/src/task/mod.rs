//! Task kinds: what a run learns, behind one interface. A [`TrainTask`] owns how its examples are
//! read and tokenized, which head the model gets, how it is evaluated (and whether higher is
//! better), and which `*For...` class a merged model is.
//!
//! | `task =` | kind | file |
//! |---|---|---|
//! | a GLUE name (`sst2`, `mrpc`, `stsb`, ...) | GLUE from `glue_dir` | `sequence.rs` |
//! | `classification`, `regression` | the user's CSV/TSV/JSONL (`train_file`, `eval_file`) | `sequence.rs` |
//! | `causal-lm` | JSONL `text` / `prompt-completion` / `messages` | `causal_lm.rs` |
//!
//! A new kind: a file with a type implementing [`TrainTask`], and one arm in [`from_config`].
//! Its evaluation comes in two halves, [`TrainTask::eval_batch`] (one batch's outputs) and
//! [`TrainTask::eval_report`] (the metrics of the whole set), so that under data parallelism
//! the ranks score shards of the batches and the metrics are still computed once.

pub mod causal_lm;
pub mod multiple_choice;
pub mod sequence;

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use tch::Device;

use loraplus_data::{
    Batch, DataLoader, LoaderConfig, MetricReport, PaddingSide, Position, Split, TokenizedDataset,
};
use loraplus_models::Head;

use crate::config::TrainConfig;
use crate::model::Model;
use crate::parallel::{self, DataParallel};

/// The tokenized data of a run.
pub struct TaskData {
    pub train: Arc<TokenizedDataset>,
    /// The evaluation sets, the first one selects checkpoints (empty: no evaluation).
    pub evals: Vec<(Split, Arc<TokenizedDataset>)>,
    /// The id batches are padded with.
    pub pad_id: u32,
    pub padding_side: PaddingSide,
}

/// One kind of task (see the module docs).
pub trait TrainTask: Send + Sync {
    /// For logs, metrics and messages (`SST-2`, `classification`, `causal-lm`).
    fn name(&self) -> String;
    /// The model head.
    fn head(&self) -> Head;
    /// The training examples, tokenized (`cfg.train_limit` applied by the caller).
    fn load_train(&self, cfg: &TrainConfig, model_dir: &Path) -> Result<Arc<TokenizedDataset>>;
    /// The evaluation sets (`cfg.eval_limit` applied by the caller).
    fn load_evals(
        &self,
        cfg: &TrainConfig,
        model_dir: &Path,
    ) -> Result<Vec<(Split, Arc<TokenizedDataset>)>>;
    /// The id batches of this task are padded with, and on which side.
    fn padding(&self, cfg: &TrainConfig, model_dir: &Path) -> Result<(u32, PaddingSide)>;
    /// Score one evaluation batch: flat f64 values (f32 logits, f64 loss sums and token counts
    /// are exact in f64) that [`Self::eval_report`] turns into metrics. Under data parallelism
    /// these are what the ranks exchange.
    fn eval_batch(&self, model: &Model, batch: &Batch, device: Device) -> Result<Vec<f64>>;
    /// The metrics of one evaluation set from every batch's [`Self::eval_batch`] outputs, in
    /// batch order (`batches`: the dataset indices of each batch).
    fn eval_report(
        &self,
        data: &TokenizedDataset,
        batches: &[Vec<usize>],
        outputs: &[Vec<f64>],
    ) -> Result<MetricReport>;
    /// Score the model on one evaluation set, in batches of `cfg.eval_batch_size` in file order.
    /// Under data parallelism (`parallel`) each rank scores its shard of those batches
    /// ([`parallel::eval_shard`]), the outputs are gathered, and every rank gets the metrics
    /// of the whole set: the single-process numbers.
    fn evaluate(
        &self,
        model: &Model,
        data: &Arc<TokenizedDataset>,
        pad: (u32, PaddingSide),
        cfg: &TrainConfig,
        device: Device,
        parallel: Option<&DataParallel>,
    ) -> Result<MetricReport> {
        let loader = DataLoader::new(
            data.clone(),
            pad.0,
            LoaderConfig {
                padding_side: pad.1,
                ..LoaderConfig::eval(cfg.eval_batch_size)
            },
        )?;
        let plan = loader.epoch_batches(0);
        let (rank, world) = parallel.map_or((0, 1), |dp| (dp.rank, dp.world));
        let mut mine = Vec::new();
        {
            let _guard = tch::no_grad_guard();
            for index in parallel::eval_shard(plan.len(), rank, world) {
                let batch = loader.build_batch(&plan[index], Position { epoch: 0, index })?;
                mine.push(self.eval_batch(model, &batch, device)?);
            }
        }
        tracing::debug!(
            "rank {rank}: scored {} of {} evaluation batches",
            mine.len(),
            plan.len()
        );
        let outputs = match parallel {
            Some(dp) => dp.gather_eval(plan.len(), &mine)?,
            None => mine,
        };
        self.eval_report(data, &plan, &outputs)
    }
    /// Whether a higher main metric is better (false for an eval loss).
    fn greater_is_better(&self) -> bool {
        true
    }
    /// The transformers class a merged model is, for `model_type` (`BertForSequenceClassification`).
    fn merged_architecture(&self, model_type: &str) -> String;
    /// Fields of a merged model's `config.json` that this task sets (labels, problem type).
    fn merged_config(&self, cfg: &mut serde_json::Map<String, serde_json::Value>);
}

/// The task kinds a config names by kind (any other `task` is a GLUE task name); each reads
/// the user's files.
pub const KINDS: &[&str] = &["classification", "regression", "causal-lm"];

/// The task kind a config names.
pub fn from_config(cfg: &TrainConfig) -> Result<Box<dyn TrainTask>> {
    match cfg.task.as_str() {
        "causal-lm" => Ok(Box::new(causal_lm::CausalLmTask::from_config(cfg)?)),
        _ => Ok(Box::new(sequence::SequenceTask::from_config(cfg)?)),
    }
}

/// The run's data or task settings refused: a file's content (a missing column, an unknown
/// label, a row that is not JSON, no rows), a label list with one class, or a subset or
/// tokenizer setting that does not fit the data. The user's input (the `loraplus` binary exits
/// 2); the message names the file and line.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct BadData(pub anyhow::Error);

/// `e` as [`BadData`], unless the system failed (an I/O error other than a missing or
/// unreadable-as-text file: a full disk, a permission, a device error), which stays as it is.
pub fn bad_data(e: anyhow::Error) -> anyhow::Error {
    use std::io::ErrorKind;
    let system = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            !matches!(
                io.kind(),
                ErrorKind::NotFound | ErrorKind::InvalidData | ErrorKind::IsADirectory
            )
        })
    });
    if system || e.downcast_ref::<BadData>().is_some() {
        e
    } else {
        anyhow::Error::new(BadData(e))
    }
}

/// All of a run's data: training set (a seeded subset with `train_limit`), evaluation sets (the
/// first `eval_limit` rows of each), padding. Errors of the data itself are [`BadData`].
pub fn load_data(task: &dyn TrainTask, cfg: &TrainConfig, model_dir: &Path) -> Result<TaskData> {
    let mut train = task.load_train(cfg, model_dir).map_err(bad_data)?;
    if let Some(n) = cfg.train_limit {
        train = Arc::new(subset(&train, n, cfg.seed).map_err(bad_data)?);
    }
    let evals = limit_evals(
        task.load_evals(cfg, model_dir).map_err(bad_data)?,
        cfg.eval_limit,
    )
    .map_err(bad_data)?;
    let (pad_id, padding_side) = task.padding(cfg, model_dir).map_err(bad_data)?;
    Ok(TaskData {
        train,
        evals,
        pad_id,
        padding_side,
    })
}

/// Pearson and Spearman correlations (a regression, GLUE's STS-B) need two rows: an evaluation
/// set of fewer is refused up front (else the run trains, then fails at its first evaluation).
pub fn check_eval_sizes(cfg: &TrainConfig, evals: &[(Split, Arc<TokenizedDataset>)]) -> Result<()> {
    let correlations = cfg.task == "regression"
        || loraplus_data::Task::from_name(&cfg.task)
            .is_ok_and(|t| t.spec().metric == loraplus_data::MetricKind::PearsonSpearman);
    if !correlations {
        return Ok(());
    }
    if let Some((split, d)) = evals.iter().find(|(_, d)| d.len() < 2) {
        return Err(bad_data(anyhow::anyhow!(
            "the {split:?} evaluation set has {} row(s): pearson and spearman need at least 2 (a larger eval file, eval_limit or --limit)",
            d.len()
        )));
    }
    Ok(())
}

/// The first `limit` rows of each evaluation set.
pub fn limit_evals(
    evals: Vec<(Split, Arc<TokenizedDataset>)>,
    limit: Option<usize>,
) -> Result<Vec<(Split, Arc<TokenizedDataset>)>> {
    match limit {
        None => Ok(evals),
        Some(n) => evals
            .into_iter()
            .map(|(s, d)| Ok((s, Arc::new(first_n(&d, n)?))))
            .collect(),
    }
}

/// `n` examples drawn without replacement with `seed` (all of them if `n >= len`), in file order.
pub fn subset(data: &TokenizedDataset, n: usize, seed: u64) -> Result<TokenizedDataset> {
    if n >= data.len() {
        return Ok(data.clone());
    }
    // A seeded Fisher-Yates over indices (SplitMix64).
    let mut idx: Vec<usize> = (0..data.len()).collect();
    let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..idx.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx.sort_unstable();
    data.select(&idx)
}

/// The first `n` examples.
pub fn first_n(data: &TokenizedDataset, n: usize) -> Result<TokenizedDataset> {
    let idx: Vec<usize> = (0..n.min(data.len())).collect();
    data.select(&idx)
}

#[cfg(test)]
mod bad_data_tests {
    use super::*;

    #[test]
    fn data_errors_are_bad_data_and_system_failures_are_not() {
        let is_bad = |e: anyhow::Error| bad_data(e).downcast_ref::<BadData>().is_some();
        assert!(is_bad(anyhow::anyhow!("t.csv: line 3: no column \"text\"")));
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert!(is_bad(anyhow::Error::new(missing).context("reading t.csv")));
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full");
        assert!(!is_bad(
            anyhow::Error::new(full).context("writing the cache")
        ));
        let denied = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        assert!(!is_bad(anyhow::Error::new(denied)));
        // Wrapped once: the message is the chain, unchanged.
        let e = bad_data(bad_data(anyhow::anyhow!("inner").context("outer")));
        assert_eq!(format!("{e:#}"), "outer: inner");
    }
}
