//! Mistral: the Llama decoder ([`crate::llama`]'s layers) with sliding-window attention:
//! each query sees the keys of the last `sliding_window` positions, itself included, in
//! training and evaluation and in generation with the key-value cache alike
//! (`sliding_window: null` is full causal attention, as in Mistral v0.2 and later).


use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::arch::{default_initializer_range, Activation, Architecture, CommonConfig};
use crate::backbone::RmsStyle;
use crate::llama::{llama_family_architecture, d_rms_eps, d_silu, DecoderSpec};
use crate::rope::RopeConfig;

// Defaults of transformers' `MistralConfig` (configuration_mistral.py).
fn mistral_vocab_size() -> i64 {
    32000
}
fn mistral_hidden_size() -> i64 {
    4096
}
fn mistral_intermediate_size() -> i64 {
    14336
}
fn mistral_layers() -> i64 {
    32
}
fn mistral_heads() -> i64 {
    32
}
fn mistral_kv_heads() -> Option<i64> {
    Some(8)
}
fn mistral_positions() -> i64 {
    4096 * 32
}
fn mistral_window() -> Option<i64> {
    Some(4096)
}

/// Mistral's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MistralConfig {
    #[serde(default = "mistral_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "mistral_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "mistral_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "mistral_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "mistral_heads")]
    pub num_attention_heads: i64,
    /// `null` means `num_attention_heads`.
    #[serde(default = "mistral_kv_heads")]
    pub num_key_value_heads: Option<i64>,
    /// `None` means hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default = "mistral_positions")]
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
    /// `null`: full causal attention.
    #[serde(default = "mistral_window")]
    pub sliding_window: Option<i64>,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl MistralConfig {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The layers this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        let spec = DecoderSpec {
            model_type: "mistral",
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_kv_heads(),
            head_dim: self.head_dim(),
            act: Activation::parse(&self.hidden_act).context("mistral hidden_act")?,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            attention_dropout: self.attention_dropout,
            rope: RopeConfig::parse(
                "mistral",
                self.rope_theta,
                &crate::rope::standardized(
                    "mistral",
                    &self.rope_parameters,
                    &self.rope_scaling,
                    self.original_max_position_embeddings,
                ),
                self.head_dim(),
                self.max_position_embeddings,
            )?,
            local_rope: None,
            sliding_window: self.sliding_window,
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

/// `model_type: "mistral"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: MistralConfig = serde_json::from_value(value).context("mistral config")?;
    c.spec()?;
    Ok(Box::new(c))
}

llama_family_architecture!(MistralConfig, "mistral");
