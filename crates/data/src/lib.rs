//! loraplus-data: GLUE files into batches of tensors, and predictions into GLUE scores.
//!
//! One split through the crate:
//!
//! ```text
//! Task::from_name("sst2")                      task.rs      columns, labels, metric
//!   -> read_split(glue_dir, task, Split::Train) reader.rs    Dataset of Examples
//!   -> Encoder::encode_cached(&ds, cache_dir)   tokenize.rs  TokenizedDataset (ids, cached on disk)
//!   -> DataLoader::new(data, pad_id, config)    batch.rs     padded Batch tensors, prefetched
//!   -> model -> predictions_from_logits
//!   -> evaluate(task, &preds, &gold)            metrics.rs   MetricReport (main = selection key)
//! ```
//!
//! [`load_split`] does the first three steps in one call.
//!
//! Causal-LM data for supervised fine-tuning (instruction tuning of decoders):
//!
//! ```text
//! LmTokenizer::from_model_dir(dir)              lm.rs        tokenizer.json + tokenizer_config.json
//!   -> lm::load_jsonl(path, &tok, &LmOptions)   lm.rs        text / prompt-completion / messages
//!        (messages through ChatTemplate)        chat_template.rs
//!   -> (TokenizedDataset with token labels, LmStats)
//!   -> DataLoader::new(data, tok.pad_id(), LoaderConfig { padding_side, .. })
//! ```
//!
//! Default locations (GLUE data, tokenizer, cache) and their environment overrides are in
//! [`paths`].

pub mod batch;
mod cache;
pub mod chat_template;
pub mod lm;
pub mod metrics;
pub mod paths;
pub mod reader;
pub mod spm;
pub mod task;
pub mod tokenize;

pub use batch::{
    padding_fraction, Batch, BatchIter, DataLoader, LoaderConfig, Padding, PaddingSide, Position,
    PrefetchIter,
};
pub use chat_template::{ChatExtras, ChatTemplate, Message};
pub use lm::{LmFormat, LmOptions, LmStats, LmTokenizer, TooLong};
pub use metrics::{
    eval_loss, evaluate, evaluate_mnli, predictions_from_logits, MetricReport, EVAL_LOSS,
};
pub use reader::{
    read_csv, read_jsonl, read_split, ColumnMapping, CsvOptions, Dataset, Example, Label,
    LabelKind, ReadOptions,
};
pub use task::{MetricKind, Split, Task, TaskSpec};
pub use tokenize::{
    sha256_hex, CacheStatus, Encoder, Labels, LmExample, TokenizedDataset, TokenizedExample,
    DEFAULT_MAX_SEQ_LEN, IGNORE_INDEX,
};

use std::path::Path;

/// Read a GLUE split and tokenize it, through the on-disk cache when `cache_dir` is given
/// (usually [`paths::cache_dir`]).
pub fn load_split(
    glue_dir: &Path,
    task: Task,
    split: Split,
    encoder: &Encoder,
    cache_dir: Option<&Path>,
    opts: ReadOptions,
) -> anyhow::Result<TokenizedDataset> {
    let ds = read_split(glue_dir, task, split, opts)?;
    match cache_dir {
        Some(dir) => Ok(encoder.encode_cached(&ds, dir)?.0),
        None => encoder.encode_dataset(&ds),
    }
}
