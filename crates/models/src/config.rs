//! `config.json` as serde structs with HuggingFace's field names and defaults, and
//! [`ModelConfig`], which dispatches on `model_type` and refuses options this crate does not
//! implement with an error naming what is supported.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use loraplus_core::LoraConfig;

use crate::heads::Head;

/// The `model_type`s this crate loads.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["bert", "roberta", "gpt2", "llama"];

/// Activation functions by their HuggingFace names (`transformers.activations.ACT2FN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `"gelu"`: exact, with erf (BERT, RoBERTa).
    Gelu,
    /// `"gelu_new"`, `"gelu_pytorch_tanh"`: the tanh approximation (GPT-2).
    GeluTanh,
    Relu,
    /// `"silu"` / `"swish"` (Llama).
    Silu,
    Tanh,
}

/// Names accepted by [`Activation::parse`].
pub const SUPPORTED_ACTIVATIONS: &[&str] = &[
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "relu",
    "silu",
    "swish",
    "tanh",
];

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            other => bail!(
                "activation {other:?} is not supported; supported: {}",
                SUPPORTED_ACTIVATIONS.join(", ")
            ),
        })
    }

    pub fn apply(self, x: &tch::Tensor) -> tch::Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
            Activation::Tanh => x.tanh(),
        }
    }
}

// Defaults below are those of transformers' `BertConfig` (configuration_bert.py).
fn bert_vocab_size() -> i64 {
    30522
}
fn d_hidden_size() -> i64 {
    768
}
fn d_num_layers() -> i64 {
    12
}
fn d_num_heads() -> i64 {
    12
}
fn bert_intermediate_size() -> i64 {
    3072
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_dropout() -> f64 {
    0.1
}
fn d_max_positions() -> i64 {
    512
}
fn d_type_vocab_size() -> i64 {
    2
}
fn d_initializer_range() -> f64 {
    0.02
}
fn bert_layer_norm_eps() -> f64 {
    1e-12
}
fn d_absolute() -> String {
    "absolute".into()
}

/// BERT's `config.json` (also RoBERTa's: `RobertaConfig` has the same fields; its
/// `pad_token_id` default is 1, set by [`ModelConfig::from_json_str`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    #[serde(default = "bert_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "d_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "d_num_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_num_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "bert_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_max_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_type_vocab_size")]
    pub type_vocab_size: i64,
    #[serde(default = "d_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "bert_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// BERT: 0; RoBERTa: 1 (also the offset of its position ids).
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default = "d_absolute")]
    pub position_embedding_type: String,
    /// Dropout before the classifier; `None` means `hidden_dropout_prob` (HF).
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default)]
    pub is_decoder: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(flatten)]
    pub common: CommonConfig,
}

// Defaults of transformers' `GPT2Config` (configuration_gpt2.py).
fn gpt2_vocab_size() -> i64 {
    50257
}
fn gpt2_positions() -> i64 {
    1024
}
fn d_gelu_new() -> String {
    "gelu_new".into()
}
fn gpt2_layer_norm_eps() -> f64 {
    1e-5
}
fn d_true() -> bool {
    true
}

/// GPT-2's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Gpt2Config {
    #[serde(default = "gpt2_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "gpt2_positions")]
    pub n_positions: i64,
    #[serde(default = "d_hidden_size")]
    pub n_embd: i64,
    #[serde(default = "d_num_layers")]
    pub n_layer: i64,
    #[serde(default = "d_num_heads")]
    pub n_head: i64,
    /// MLP width; `None` means 4 * n_embd.
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "d_gelu_new")]
    pub activation_function: String,
    #[serde(default = "d_dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "d_dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "d_dropout")]
    pub attn_pdrop: f64,
    #[serde(default = "gpt2_layer_norm_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "d_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Only changes HF's eager attention (upcast to f32); sdpa ignores it, as we do.
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    #[serde(flatten)]
    pub common: CommonConfig,
}

// Defaults of transformers' `LlamaConfig` (configuration_llama.py).
fn llama_vocab_size() -> i64 {
    32000
}
fn llama_hidden_size() -> i64 {
    4096
}
fn llama_intermediate_size() -> i64 {
    11008
}
fn llama_layers() -> i64 {
    32
}
fn llama_heads() -> i64 {
    32
}
fn d_silu() -> String {
    "silu".into()
}
fn llama_positions() -> i64 {
    2048
}
fn llama_rms_eps() -> f64 {
    1e-6
}
/// RoPE base (`rope_theta`), transformers' default.
pub const DEFAULT_ROPE_THETA: f64 = 10000.0;

/// Llama's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "llama_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "llama_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "llama_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "llama_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "llama_heads")]
    pub num_attention_heads: i64,
    /// Grouped-query attention; `None` means `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// `None` means hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default = "llama_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "llama_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// transformers < 5 keep the base at the top level.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers 5: `{"rope_theta": .., "rope_type": "default"}`.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// transformers < 5: RoPE scaling (`null` for plain RoPE).
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(flatten)]
    pub common: CommonConfig,
}

/// Fields every HuggingFace config has (`PretrainedConfig`).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
pub struct CommonConfig {
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    /// Labels of a classification checkpoint; their count is HF's `num_labels`.
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub problem_type: Option<String>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    #[serde(default)]
    pub bos_token_id: Option<Value>,
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The RoPE base, from `rope_parameters` (transformers 5) or `rope_theta` (older).
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or(DEFAULT_ROPE_THETA)
    }

    fn validate(&self) -> Result<()> {
        Activation::parse(&self.hidden_act).context("llama hidden_act")?;
        for (field, v) in [
            ("rope_parameters", &self.rope_parameters),
            ("rope_scaling", &self.rope_scaling),
        ] {
            let Some(v) = v else { continue };
            if v.is_null() {
                continue;
            }
            let ty = v
                .get("rope_type")
                .or_else(|| v.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if ty != "default" {
                bail!("{field}: rope_type {ty:?} is not supported; supported: \"default\" (plain RoPE)");
            }
        }
        if self.num_attention_heads <= 0 || self.num_kv_heads() <= 0 {
            bail!("llama: num_attention_heads and num_key_value_heads must be positive");
        }
        if self.num_attention_heads % self.num_kv_heads() != 0 {
            bail!(
                "llama: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_kv_heads()
            );
        }
        if self.head_dim() % 2 != 0 {
            bail!(
                "llama: head_dim {} must be even for rotary embeddings",
                self.head_dim()
            );
        }
        Ok(())
    }
}

impl BertConfig {
    fn validate(&self, model_type: &str) -> Result<()> {
        Activation::parse(&self.hidden_act).with_context(|| format!("{model_type} hidden_act"))?;
        if self.position_embedding_type != "absolute" {
            bail!(
                "{model_type}: position_embedding_type {:?} is not supported; supported: \"absolute\"",
                self.position_embedding_type
            );
        }
        if self.is_decoder || self.add_cross_attention {
            bail!("{model_type}: is_decoder / add_cross_attention are not supported; only the encoder is implemented");
        }
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "{model_type}: hidden_size ({}) is not a multiple of num_attention_heads ({})",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        Ok(())
    }
}

impl Gpt2Config {
    pub fn inner_dim(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    fn validate(&self) -> Result<()> {
        Activation::parse(&self.activation_function).context("gpt2 activation_function")?;
        if self.add_cross_attention {
            bail!("gpt2: add_cross_attention is not supported; only the decoder-only model is implemented");
        }
        if self.n_head <= 0 || self.n_embd % self.n_head != 0 {
            bail!(
                "gpt2: n_embd ({}) is not a multiple of n_head ({})",
                self.n_embd,
                self.n_head
            );
        }
        Ok(())
    }
}

/// A parsed `config.json` of one of the supported architectures.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Bert(BertConfig),
    Roberta(BertConfig),
    Gpt2(Gpt2Config),
    Llama(LlamaConfig),
}

/// RoBERTa's default `pad_token_id` (transformers' `RobertaConfig`).
const ROBERTA_PAD_TOKEN_ID: i64 = 1;
/// BERT's default `pad_token_id` (transformers' `BertConfig`).
const BERT_PAD_TOKEN_ID: i64 = 0;

impl ModelConfig {
    /// Read `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("{}", path.display()))
    }

    /// Parse the text of a `config.json`, dispatching on `model_type`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).context("parsing config JSON")?;
        let model_type = value
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                anyhow!(
                    "config has no \"model_type\"; supported: {}",
                    SUPPORTED_MODEL_TYPES.join(", ")
                )
            })?
            .to_string();
        let cfg = match model_type.as_str() {
            "bert" | "roberta" => {
                let mut c: BertConfig = serde_json::from_value(value)
                    .with_context(|| format!("{model_type} config"))?;
                let default_pad = if model_type == "roberta" {
                    ROBERTA_PAD_TOKEN_ID
                } else {
                    BERT_PAD_TOKEN_ID
                };
                c.pad_token_id = Some(c.pad_token_id.unwrap_or(default_pad));
                c.validate(&model_type)?;
                if model_type == "roberta" {
                    ModelConfig::Roberta(c)
                } else {
                    ModelConfig::Bert(c)
                }
            }
            "gpt2" => {
                let c: Gpt2Config = serde_json::from_value(value).context("gpt2 config")?;
                c.validate()?;
                ModelConfig::Gpt2(c)
            }
            "llama" => {
                let c: LlamaConfig = serde_json::from_value(value).context("llama config")?;
                c.validate()?;
                ModelConfig::Llama(c)
            }
            other => bail!(
                "model_type {other:?} is not supported; supported: {}",
                SUPPORTED_MODEL_TYPES.join(", ")
            ),
        };
        Ok(cfg)
    }

    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::Bert(_) => "bert",
            ModelConfig::Roberta(_) => "roberta",
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::Llama(_) => "llama",
        }
    }

    /// The name HuggingFace's task models give the backbone (`base_model_prefix`): `bert`,
    /// `roberta`, `transformer`, `model`.
    pub fn base_model_prefix(&self) -> &'static str {
        match self {
            ModelConfig::Bert(_) => "bert",
            ModelConfig::Roberta(_) => "roberta",
            ModelConfig::Gpt2(_) => "transformer",
            ModelConfig::Llama(_) => "model",
        }
    }

    pub fn hidden_size(&self) -> i64 {
        match self {
            ModelConfig::Bert(c) | ModelConfig::Roberta(c) => c.hidden_size,
            ModelConfig::Gpt2(c) => c.n_embd,
            ModelConfig::Llama(c) => c.hidden_size,
        }
    }

    pub fn num_layers(&self) -> i64 {
        match self {
            ModelConfig::Bert(c) | ModelConfig::Roberta(c) => c.num_hidden_layers,
            ModelConfig::Gpt2(c) => c.n_layer,
            ModelConfig::Llama(c) => c.num_hidden_layers,
        }
    }

    pub fn vocab_size(&self) -> i64 {
        match self {
            ModelConfig::Bert(c) | ModelConfig::Roberta(c) => c.vocab_size,
            ModelConfig::Gpt2(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
        }
    }

    pub fn pad_token_id(&self) -> Option<i64> {
        match self {
            ModelConfig::Bert(c) | ModelConfig::Roberta(c) => c.pad_token_id,
            ModelConfig::Gpt2(c) => c.pad_token_id,
            ModelConfig::Llama(c) => c.pad_token_id,
        }
    }

    pub fn initializer_range(&self) -> f64 {
        match self {
            ModelConfig::Bert(c) | ModelConfig::Roberta(c) => c.initializer_range,
            ModelConfig::Gpt2(c) => c.initializer_range,
            ModelConfig::Llama(c) => c.initializer_range,
        }
    }

    /// The longest sequence the position embeddings allow (`None`: rotary, no table).
    pub fn max_positions(&self) -> Option<i64> {
        match self {
            ModelConfig::Bert(c) => Some(c.max_position_embeddings),
            // Positions start after padding_idx.
            ModelConfig::Roberta(c) => {
                Some(c.max_position_embeddings - c.pad_token_id.unwrap_or(ROBERTA_PAD_TOKEN_ID) - 1)
            }
            ModelConfig::Gpt2(c) => Some(c.n_positions),
            ModelConfig::Llama(_) => None,
        }
    }

    pub fn common(&self) -> &CommonConfig {
        match self {
            ModelConfig::Bert(c) | ModelConfig::Roberta(c) => &c.common,
            ModelConfig::Gpt2(c) => &c.common,
            ModelConfig::Llama(c) => &c.common,
        }
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
        let (targets, heads): (Vec<&str>, Vec<&str>) = match self {
            ModelConfig::Bert(_) => (vec!["query", "value"], vec!["classifier", "pooler.dense"]),
            ModelConfig::Roberta(_) => (
                vec!["query", "value"],
                vec!["classifier.dense", "classifier.out_proj"],
            ),
            ModelConfig::Gpt2(_) => (vec!["c_attn"], vec!["score"]),
            ModelConfig::Llama(_) => (vec!["q_proj", "v_proj"], vec!["score"]),
        };
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
        cfg.fan_in_fan_out = matches!(self, ModelConfig::Gpt2(_));
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
        let ModelConfig::Roberta(r) = &c else {
            panic!()
        };
        assert_eq!(r.pad_token_id, Some(1));
        assert_eq!(r.layer_norm_eps, 1e-12);
        assert_eq!(c.max_positions(), Some(510));
        let c = ModelConfig::from_json_str(r#"{"model_type": "gpt2", "n_embd": 64, "n_head": 4}"#)
            .unwrap();
        let ModelConfig::Gpt2(g) = &c else { panic!() };
        assert_eq!(g.inner_dim(), 256);
        assert!(g.tie_word_embeddings);
        let c = ModelConfig::from_json_str(
            r#"{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}"#,
        )
        .unwrap();
        let ModelConfig::Llama(l) = &c else { panic!() };
        assert_eq!(l.head_dim(), 16);
        assert_eq!(l.rope_theta(), 500000.0);
        assert!(!l.tie_word_embeddings);
    }

    #[test]
    fn unsupported_options_name_what_is_supported() {
        let e = ModelConfig::from_json_str(r#"{"model_type": "t5"}"#).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("\"t5\"") && msg.contains("bert, roberta, gpt2, llama"),
            "{msg}"
        );
        let e = ModelConfig::from_json_str(r#"{"model_type": "bert", "hidden_act": "mish"}"#)
            .unwrap_err();
        assert!(format!("{e:#}").contains("supported: gelu"), "{e:#}");
        let e = ModelConfig::from_json_str(
            r#"{"model_type": "bert", "position_embedding_type": "relative_key"}"#,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("\"absolute\""));
        let e = ModelConfig::from_json_str(
            r#"{"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}"#,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("llama3"));
        let e = ModelConfig::from_json_str(r#"{"hidden_size": 3}"#).unwrap_err();
        assert!(format!("{e:#}").contains("model_type"));
    }
}
