//! Qwen2 / Qwen2.5: the Llama decoder ([`crate::llama`]'s layers) with biases on `q_proj`,
//! `k_proj` and `v_proj` (none on `o_proj`), tied or untied embeddings. Sliding-window
//! attention (`use_sliding_window`) is refused: released Qwen2 checkpoints leave it off.


use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::arch::{default_initializer_range, Activation, Architecture, CommonConfig};
use crate::backbone::RmsStyle;
use crate::llama::{llama_family_architecture, d_rms_eps, d_silu, DecoderSpec};
use crate::rope::RopeConfig;

// Defaults of transformers' `Qwen2Config` (configuration_qwen2.py).
fn qwen2_vocab_size() -> i64 {
    151936
}
fn qwen2_hidden_size() -> i64 {
    4096
}
fn qwen2_intermediate_size() -> i64 {
    22016
}
fn qwen2_layers() -> i64 {
    32
}
fn qwen2_heads() -> i64 {
    32
}
fn qwen2_kv_heads() -> Option<i64> {
    Some(32)
}
fn qwen2_positions() -> i64 {
    32768
}

/// Qwen2's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Qwen2Config {
    #[serde(default = "qwen2_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "qwen2_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "qwen2_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "qwen2_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "qwen2_heads")]
    pub num_attention_heads: i64,
    /// Absent: 32, as transformers' default; `null`: `num_attention_heads`.
    #[serde(default = "qwen2_kv_heads")]
    pub num_key_value_heads: Option<i64>,
    /// `None` means hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default = "qwen2_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// The pretraining context at the top level, as some configs have it: for llama3 and yarn
    /// RoPE it wins over `rope_parameters`' own (transformers' `standardize_rope_params`).
    #[serde(default)]
    pub original_max_position_embeddings: Option<i64>,
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Per layer, `"full_attention"` or `"sliding_attention"` (transformers 5).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl Qwen2Config {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The layers this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        let sliding = self
            .layer_types
            .iter()
            .flatten()
            .find(|t| t.as_str() != "full_attention");
        if self.use_sliding_window || sliding.is_some() {
            bail!(
                "qwen2: sliding-window attention (use_sliding_window, layer_types {:?}) is not supported; supported: \"full_attention\" in every layer",
                sliding.map_or("sliding_attention", String::as_str)
            );
        }
        let spec = DecoderSpec {
            model_type: "qwen2",
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_kv_heads(),
            head_dim: self.head_dim(),
            act: Activation::parse(&self.hidden_act).context("qwen2 hidden_act")?,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            attention_dropout: self.attention_dropout,
            rope: RopeConfig::parse(
                "qwen2",
                self.rope_theta,
                &crate::rope::standardized(
                    "qwen2",
                    &self.rope_parameters,
                    &self.rope_scaling,
                    self.original_max_position_embeddings,
                ),
                self.head_dim(),
                self.max_position_embeddings,
            )?,
            local_rope: None,
            sliding_window: None,
            pad_token_id: self.pad_token_id,
            tie_word_embeddings: self.tie_word_embeddings,
            embed_scale: None,
            norm_style: RmsStyle::Llama,
            qk_norm: false,
            nope_layers: Vec::new(),
            rope_in_f32: false,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// `model_type: "qwen2"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: Qwen2Config = serde_json::from_value(value).context("qwen2 config")?;
    c.spec()?;
    Ok(Box::new(c))
}

llama_family_architecture!(Qwen2Config, "qwen2");
