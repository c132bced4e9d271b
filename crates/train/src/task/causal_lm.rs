//! Causal language modelling (supervised fine-tuning of a decoder): JSONL rows in the `text`,
//! `prompt-completion` or `messages` format (see `loraplus_data::lm`), loss on the tokens that
//! take one (completions, assistant turns), evaluated as the mean token loss and perplexity of
//! the evaluation file. A merged model is `*ForCausalLM` (`GPT2LMHeadModel`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use loraplus_data::lm::{self, LmFormat, LmOptions, TooLong};
use loraplus_data::{Batch, MetricReport, PaddingSide, Split, TokenizedDataset};
use loraplus_models::{Head, ModelInputs, IGNORE_INDEX};

use crate::config::TrainConfig;
use crate::model::{self, Model};
use crate::task::TrainTask;

/// The main metric of a causal-LM evaluation (lower is better): its token loss.
pub use loraplus_data::EVAL_LOSS;

/// A causal-LM task over the user's JSONL files.
#[derive(Debug, Clone)]
pub struct CausalLmTask {
    pub train: Option<PathBuf>,
    pub eval: Option<PathBuf>,
    pub options: LmOptions,
}

impl CausalLmTask {
    pub fn from_config(cfg: &TrainConfig) -> Result<CausalLmTask> {
        let format = cfg
            .format
            .as_deref()
            .map(|f| f.parse::<LmFormat>())
            .transpose()
            .context("field `format`")?;
        let too_long = match cfg.too_long.as_str() {
            "error" => TooLong::Error,
            _ => TooLong::Skip,
        };
        Ok(CausalLmTask {
            train: cfg.train_file.clone(),
            eval: cfg.eval_file.clone(),
            options: LmOptions {
                format,
                max_seq_len: cfg.max_seq_len(),
                packing: cfg.packing,
                too_long,
                assistant_only_loss: cfg.assistant_only_loss,
                completion_only_loss: cfg.completion_only_loss,
            },
        })
    }

    fn load(&self, path: &Path, model_dir: &Path, packing: bool) -> Result<Arc<TokenizedDataset>> {
        let tok = crate::model::decoder_tokenizer(model_dir)?;
        let opts = LmOptions {
            packing,
            ..self.options.clone()
        };
        let (ds, stats) = lm::load_jsonl(path, &tok, &opts)?;
        tracing::info!("{}: {stats}", path.display());
        // A loss setting for the other format does nothing here: said once per file.
        for (setting, off, format) in [
            (
                "assistant_only_loss",
                !opts.assistant_only_loss,
                LmFormat::Messages,
            ),
            (
                "completion_only_loss",
                !opts.completion_only_loss,
                LmFormat::PromptCompletion,
            ),
        ] {
            let applies =
                stats.format == Some(format) || (format == LmFormat::Messages && stats.chat);
            if off && !applies {
                tracing::warn!(
                    "{}: {setting} = false is for {format} rows; these are {}: it changes nothing",
                    path.display(),
                    stats.format.map_or("?", LmFormat::name)
                );
            }
        }
        Ok(Arc::new(ds))
    }

    /// The padding of this task's training and evaluation batches: the tokenizer's pad id (EOS
    /// when it has none), on the right whatever the tokenizer's `padding_side` (which is for
    /// generation), as TRL's collator pads: on the left, a model with learned positions (GPT-2)
    /// would see each example's positions shifted by its batch's padding.
    pub fn padding(model_dir: &Path) -> Result<(u32, PaddingSide)> {
        let tok = crate::model::decoder_tokenizer(model_dir)?;
        Ok((tok.pad_id(), PaddingSide::Right))
    }
}

/// transformers' causal-LM class of `model_type` (its `AutoModelForCausalLM` mapping).
fn causal_lm_class(model_type: &str) -> String {
    match model_type {
        "gpt2" => "GPT2LMHeadModel".into(),
        "gemma3_text" => "Gemma3ForCausalLM".into(),
        other => format!("{}ForCausalLM", model::class_prefix(other)),
    }
}

/// Sum of the token losses of a batch and the number of tokens that take one (labels `[B, T]`,
/// position `t` predicting `labels[t + 1]`, `-100` ignored), in f64 on the host.
pub fn token_loss_sum(logits: &Tensor, labels: &Tensor) -> Result<(f64, i64)> {
    let (b, t) = (labels.size()[0], labels.size()[1]);
    let vocab = logits.size()[2];
    let labels = labels.to_device(logits.device());
    let target = labels.narrow(1, 1, t - 1).reshape([-1]);
    let pred = logits
        .narrow(1, 0, t - 1)
        .to_kind(Kind::Float)
        .reshape([b * (t - 1), vocab]);
    let sum =
        pred.f_cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Sum, IGNORE_INDEX, 0.0)?;
    let n = target.ne(IGNORE_INDEX).sum(Kind::Int64).int64_value(&[]);
    Ok((sum.double_value(&[]), n))
}

impl TrainTask for CausalLmTask {
    fn name(&self) -> String {
        "causal-lm".into()
    }

    fn head(&self) -> Head {
        Head::CausalLm
    }

    fn load_train(&self, _cfg: &TrainConfig, model_dir: &Path) -> Result<Arc<TokenizedDataset>> {
        let path = self
            .train
            .as_ref()
            .context("field `train_file` is required to train a causal LM")?;
        self.load(path, model_dir, self.options.packing)
    }

    fn load_evals(
        &self,
        _cfg: &TrainConfig,
        model_dir: &Path,
    ) -> Result<Vec<(Split, Arc<TokenizedDataset>)>> {
        // Evaluation never packs: every example is scored on its own, whatever the training did.
        match &self.eval {
            None => Ok(Vec::new()),
            Some(p) => Ok(vec![(Split::Dev, self.load(p, model_dir, false)?)]),
        }
    }

    fn padding(&self, _cfg: &TrainConfig, model_dir: &Path) -> Result<(u32, PaddingSide)> {
        Self::padding(model_dir)
    }

    /// `[sum of the token losses, number of target tokens]` of the batch.
    fn eval_batch(&self, model: &Model, batch: &Batch, device: Device) -> Result<Vec<f64>> {
        let labels = batch
            .labels
            .as_ref()
            .context("a causal-LM batch without labels")?;
        let logits = model::eval_logits(model, batch, device)?;
        let (sum, n) = token_loss_sum(&logits, labels)?;
        Ok(vec![sum, n as f64])
    }

    /// The mean token loss (and perplexity) over the whole set: the batches' sums added in
    /// batch order.
    fn eval_report(
        &self,
        _data: &TokenizedDataset,
        _batches: &[Vec<usize>],
        outputs: &[Vec<f64>],
    ) -> Result<MetricReport> {
        let (mut sum, mut n) = (0.0f64, 0i64);
        for (b, out) in outputs.iter().enumerate() {
            let [s, k] = out.as_slice() else {
                bail!(
                    "evaluation batch {b}: {} values, expected 2 (loss sum, target tokens)",
                    out.len()
                );
            };
            sum += s;
            n += *k as i64;
        }
        anyhow::ensure!(n > 0, "the evaluation set has no target tokens");
        let loss = sum / n as f64;
        let values = [
            (EVAL_LOSS.to_string(), loss),
            ("perplexity".to_string(), loss.exp()),
            ("eval_tokens".to_string(), n as f64),
        ]
        .into_iter()
        .collect();
        Ok(MetricReport {
            task: self.name(),
            values,
            main_name: EVAL_LOSS.into(),
            main: loss,
            loss: Some(loss),
        })
    }

    fn greater_is_better(&self) -> bool {
        false
    }

    fn merged_architecture(&self, model_type: &str) -> String {
        causal_lm_class(model_type)
    }

    fn merged_config(&self, obj: &mut serde_json::Map<String, serde_json::Value>) {
        for k in ["num_labels", "id2label", "label2id", "problem_type"] {
            obj.remove(k);
        }
    }
}

/// The inputs of a batch on `device`, position ids included when the batch has them (packed rows).
pub fn inputs_on<'a>(
    ids: &'a Tensor,
    mask: &'a Tensor,
    types: Option<&'a Tensor>,
    positions: Option<&'a Tensor>,
) -> ModelInputs<'a> {
    ModelInputs {
        input_ids: ids,
        attention_mask: mask,
        token_type_ids: types,
        position_ids: positions,
    }
}

#[cfg(test)]
mod tests {
    /// Every decoder's merged class is transformers' (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES).
    #[test]
    fn merged_classes_are_transformers_causal_lm_classes() {
        let want = [
            ("gpt2", "GPT2LMHeadModel"),
            ("llama", "LlamaForCausalLM"),
            ("qwen2", "Qwen2ForCausalLM"),
            ("qwen3", "Qwen3ForCausalLM"),
            ("mistral", "MistralForCausalLM"),
            ("gemma", "GemmaForCausalLM"),
            ("gemma2", "Gemma2ForCausalLM"),
            ("gemma3_text", "Gemma3ForCausalLM"),
            ("phi3", "Phi3ForCausalLM"),
            ("olmo2", "Olmo2ForCausalLM"),
            ("olmo3", "Olmo3ForCausalLM"),
            ("smollm3", "SmolLM3ForCausalLM"),
        ];
        let types = loraplus_models::registry::causal_lm_model_types();
        assert_eq!(types, want.map(|w| w.0), "a decoder without its class here");
        for (model_type, class) in want {
            assert_eq!(super::causal_lm_class(model_type), class);
        }
    }
}
