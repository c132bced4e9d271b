//! [`ModelConfig`]: a parsed `config.json`, dispatched on `model_type` through
//! [`crate::registry`], which refuses a `model_type` it does not know by listing those it does.
//! Each architecture's config struct (HF field names and defaults) is in its own file; they
//! are re-exported here.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use loraplus_core::LoraConfig;

use crate::arch::Architecture;
use crate::bad_checkpoint;
use crate::heads::Head;
use crate::registry::{lookup, supported_model_types};

pub use crate::arch::{Activation, CommonConfig, SUPPORTED_ACTIVATIONS};
pub use crate::bert::BertConfig;
pub use crate::gpt2::Gpt2Config;
pub use crate::llama::{LlamaConfig, DEFAULT_ROPE_THETA};
pub use crate::roberta::RobertaConfig;

/// A parsed `config.json` of one of the registered architectures.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    arch: Arc<dyn Architecture>,
}

impl ModelConfig {
    /// Read `config.json`.
    /// Errors in the file (missing, not JSON, unsupported or inconsistent) are
    /// [`BadCheckpoint`](crate::BadCheckpoint)s naming it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad_checkpoint(format!(
                    "{}: no such file (a model folder holds config.json, model.safetensors and tokenizer.json)",
                    path.display()
                )))
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Self::from_json_str(&text).with_context(|| format!("{}", path.display()))
    }

    /// Parse the text of a `config.json`, dispatching on `model_type`. Its errors are
    /// [`BadCheckpoint`](crate::BadCheckpoint)s.
    pub fn from_json_str(text: &str) -> Result<Self> {
        Self::parse(text).map_err(|e| bad_checkpoint(format!("{e:#}")))
    }

    fn parse(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).context("parsing config JSON")?;
        let supported = || supported_model_types().join(", ");
        let model_type = value
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("config has no \"model_type\"; supported: {}", supported()))?
            .to_string();
        let Some(parse) = lookup(&model_type) else {
            // Multimodal checkpoints whose text model is supported: say which to use.
            let hint = match model_type.as_str() {
                "gemma3" => {
                    " (the multimodal Gemma 3, Gemma3ForConditionalGeneration; its \
                             text-only checkpoints, model_type \"gemma3_text\" as \
                             gemma-3-1b and gemma-3-270m, are)"
                }
                _ => "",
            };
            bail!(
                "model_type {model_type:?} is not supported{hint}; supported: {}",
                supported()
            );
        };
        let config = ModelConfig {
            arch: Arc::from(parse(value)?),
        };
        for (what, n) in [
            ("the hidden size", config.hidden_size()),
            ("the number of layers", config.num_layers()),
            ("the vocabulary size", config.vocab_size()),
        ] {
            if n < 1 {
                bail!("{model_type}: {what} must be at least 1, found {n}");
            }
        }
        Ok(config)
    }

    /// The architecture behind this config.
    pub fn arch(&self) -> &dyn Architecture {
        self.arch.as_ref()
    }

    /// The typed config when it is a `T` (`config.get::<LlamaConfig>()`).
    pub fn get<T: Architecture>(&self) -> Option<&T> {
        self.arch.as_any().downcast_ref::<T>()
    }

    pub fn model_type(&self) -> &'static str {
        self.arch.model_type()
    }

    /// The name HuggingFace's task models give the backbone (`base_model_prefix`): `bert`,
    /// `roberta`, `transformer`, `model`.
    pub fn base_model_prefix(&self) -> &'static str {
        self.arch.base_model_prefix()
    }

    pub fn hidden_size(&self) -> i64 {
        self.arch.hidden_size()
    }

    pub fn num_layers(&self) -> i64 {
        self.arch.num_layers()
    }

    pub fn vocab_size(&self) -> i64 {
        self.arch.vocab_size()
    }

    pub fn pad_token_id(&self) -> Option<i64> {
        self.arch.pad_token_id()
    }

    pub fn initializer_range(&self) -> f64 {
        self.arch.initializer_range()
    }

    /// The longest sequence the position embeddings allow (`None`: rotary, no table).
    pub fn max_positions(&self) -> Option<i64> {
        self.arch.max_positions()
    }

    /// See [`Architecture::type_vocab_size`].
    pub fn type_vocab_size(&self) -> Option<i64> {
        self.arch.type_vocab_size()
    }

    pub fn common(&self) -> &CommonConfig {
        self.arch.common()
    }

    /// HF's `num_labels` as the checkpoint records it (the size of `id2label`), if any.
    pub fn num_labels(&self) -> Option<i64> {
        self.common().id2label.as_ref().map(|m| m.len() as i64)
    }

    /// The LoRA targets and `modules_to_save` we recommend for this architecture and task:
    /// the attention projections the LoRA and LoRA+ papers adapt, and the classification head
    /// (new for a pretrained backbone) trained in full. Heads are named by their linear layers
    /// (`pooler.dense`, not `pooler`): PEFT treats both alike, and leaf names are what
    /// `LoraBuilder::finish` checks `modules_to_save` against.
    pub fn recommended_lora_modules(&self, head: Head) -> (Vec<&'static str>, Vec<&'static str>) {
        let (targets, heads) = self.arch.recommended_lora_modules();
        match head {
            Head::CausalLm => (targets, Vec::new()),
            Head::SequenceClassification { .. } => (targets, heads),
        }
    }

    /// A [`LoraConfig`] with [`Self::recommended_lora_modules`], rank `r` and `lora_alpha`,
    /// `fan_in_fan_out` for GPT-2's Conv1D weights, and PEFT's `task_type` (`SEQ_CLS` /
    /// `CAUSAL_LM`) so that PEFT's `AutoPeftModelFor*` load the saved adapter.
    pub fn recommended_lora_config(&self, head: Head, r: usize, lora_alpha: f64) -> LoraConfig {
        let (targets, heads) = self.recommended_lora_modules(head);
        let mut cfg = LoraConfig::new(r, lora_alpha, &targets);
        if !heads.is_empty() {
            cfg.modules_to_save = Some(heads.iter().map(|s| s.to_string()).collect());
        }
        cfg.fan_in_fan_out = self.arch.fan_in_fan_out();
        cfg.task_type = Some(
            match head {
                Head::CausalLm => "CAUSAL_LM",
                Head::SequenceClassification { .. } => "SEQ_CLS",
            }
            .to_string(),
        );
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_transformers() {
        let c = ModelConfig::from_json_str(r#"{"model_type": "roberta"}"#).unwrap();
        let r = c.get::<RobertaConfig>().unwrap();
        assert_eq!(r.pad_token_id, Some(1));
        assert_eq!(r.layer_norm_eps, 1e-12);
        assert_eq!(c.max_positions(), Some(510));
        let c = ModelConfig::from_json_str(r#"{"model_type": "gpt2", "n_embd": 64, "n_head": 4}"#)
            .unwrap();
        let g = c.get::<Gpt2Config>().unwrap();
        assert_eq!(g.inner_dim(), 256);
        assert!(g.tie_word_embeddings);
        let c = ModelConfig::from_json_str(
            r#"{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}"#,
        )
        .unwrap();
        let l = c.get::<LlamaConfig>().unwrap();
        assert_eq!(l.head_dim(), 16);
        assert_eq!(l.rope_theta(), 500000.0);
        assert!(!l.tie_word_embeddings);
        // Mistral's window defaults to 4096; `null` turns it off.
        let c = ModelConfig::from_json_str(r#"{"model_type": "mistral"}"#).unwrap();
        let m = c.get::<crate::mistral::MistralConfig>().unwrap();
        assert_eq!(m.sliding_window, Some(4096));
        assert_eq!(m.num_kv_heads(), 8);
        let c = ModelConfig::from_json_str(r#"{"model_type": "mistral", "sliding_window": null}"#)
            .unwrap();
        let m = c.get::<crate::mistral::MistralConfig>().unwrap();
        assert_eq!(m.sliding_window, None);
        let c = ModelConfig::from_json_str(r#"{"model_type": "gemma"}"#).unwrap();
        assert_eq!(c.get::<crate::gemma::GemmaConfig>().unwrap().head_dim, 256);
        assert_eq!(c.pad_token_id(), Some(0));
    }

    #[test]
    fn unsupported_options_name_what_is_supported() {
        let e = ModelConfig::from_json_str(r#"{"model_type": "t5"}"#).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("\"t5\"") && msg.contains("bert, roberta, gpt2, llama"),
            "{msg}"
        );
        let e = ModelConfig::from_json_str(r#"{"model_type": "gemma3"}"#).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("multimodal Gemma 3") && msg.contains("\"gemma3_text\""),
            "{msg}"
        );
        let e = ModelConfig::from_json_str(r#"{"model_type": "bert", "hidden_act": "laplace"}"#)
            .unwrap_err();
        assert!(format!("{e:#}").contains("supported: gelu"), "{e:#}");
        let e = ModelConfig::from_json_str(
            r#"{"model_type": "bert", "position_embedding_type": "relative_key"}"#,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("\"absolute\""));
        let e = ModelConfig::from_json_str(
            r#"{"model_type": "llama", "rope_scaling": {"rope_type": "proportional", "factor": 8.0}}"#,
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("\"proportional\" is not supported"),
            "{e:#}"
        );
        let e = ModelConfig::from_json_str(
            r#"{"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}"#,
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("low_freq_factor is missing"),
            "{e:#}"
        );
        let e =
            ModelConfig::from_json_str(r#"{"model_type": "qwen2", "use_sliding_window": true}"#)
                .unwrap_err();
        assert!(format!("{e:#}").contains("use_sliding_window"), "{e:#}");
        let e = ModelConfig::from_json_str(
            r#"{"model_type": "gemma", "use_bidirectional_attention": true}"#,
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("use_bidirectional_attention"),
            "{e:#}"
        );
        let e = ModelConfig::from_json_str(r#"{"model_type": "mistral", "sliding_window": 0}"#)
            .unwrap_err();
        assert!(format!("{e:#}").contains("sliding_window"), "{e:#}");
        let e = ModelConfig::from_json_str(r#"{"hidden_size": 3}"#).unwrap_err();
        assert!(format!("{e:#}").contains("model_type"));
    }
}
