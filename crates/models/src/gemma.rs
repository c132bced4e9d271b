//! Gemma: the Llama decoder ([`crate::llama`]'s layers) with embeddings scaled by
//! `sqrt(hidden_size)`, RMSNorm scaling by `1 + weight` (in f32), a GeGLU MLP (tanh GELU,
//! `hidden_act`; the legacy `"gelu"` of the official configs means it too) and a `head_dim` of its own (256, not hidden_size / heads); the LM head is tied
//! to the embeddings by default. Bidirectional attention (`use_bidirectional_attention`) is
//! refused.


use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::arch::{default_initializer_range, default_true, Activation, Architecture, CommonConfig};
use crate::backbone::RmsStyle;
use crate::llama::{llama_family_architecture, d_rms_eps, DecoderSpec};
use crate::rope::RopeConfig;

// Defaults of transformers' `GemmaConfig` (configuration_gemma.py).
fn gemma_vocab_size() -> i64 {
    256000
}
fn gemma_hidden_size() -> i64 {
    3072
}
fn gemma_intermediate_size() -> i64 {
    24576
}
fn gemma_layers() -> i64 {
    28
}
fn gemma_heads() -> i64 {
    16
}
fn gemma_kv_heads() -> Option<i64> {
    Some(16)
}
fn gemma_head_dim() -> i64 {
    256
}
fn gemma_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn gemma_positions() -> i64 {
    8192
}
fn gemma_pad() -> Option<i64> {
    Some(0)
}

/// Gemma's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GemmaConfig {
    #[serde(default = "gemma_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "gemma_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "gemma_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "gemma_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "gemma_heads")]
    pub num_attention_heads: i64,
    /// `null` means `num_attention_heads`.
    #[serde(default = "gemma_kv_heads")]
    pub num_key_value_heads: Option<i64>,
    #[serde(default = "gemma_head_dim")]
    pub head_dim: i64,
    #[serde(default = "gemma_act")]
    pub hidden_act: String,
    #[serde(default = "gemma_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "gemma_pad")]
    pub pad_token_id: Option<i64>,
    #[serde(default = "default_true")]
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
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl GemmaConfig {
    /// `hidden_act`, with the official releases' legacy `"gelu"` read as the tanh
    /// approximation it stands for (transformers' `GemmaConfig` rewrites it the same way).
    pub fn activation(&self) -> &str {
        match self.hidden_act.as_str() {
            "gelu" => "gelu_pytorch_tanh",
            other => other,
        }
    }

    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The layers this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        if self.use_bidirectional_attention == Some(true) {
            bail!("gemma: use_bidirectional_attention is not supported; supported: causal attention (false or null)");
        }
        let spec = DecoderSpec {
            model_type: "gemma",
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_kv_heads(),
            head_dim: self.head_dim,
            act: Activation::parse(self.activation()).context("gemma hidden_act")?,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: false,
            attention_dropout: self.attention_dropout,
            rope: RopeConfig::parse(
                "gemma",
                self.rope_theta,
                &crate::rope::standardized(
                    "gemma",
                    &self.rope_parameters,
                    &self.rope_scaling,
                    self.original_max_position_embeddings,
                ),
                self.head_dim,
                self.max_position_embeddings,
            )?,
            local_rope: None,
            sliding_window: None,
            pad_token_id: self.pad_token_id,
            tie_word_embeddings: self.tie_word_embeddings,
            embed_scale: Some((self.hidden_size as f64).sqrt()),
            norm_style: RmsStyle::UnitOffset,
            qk_norm: false,
            nope_layers: Vec::new(),
            rope_in_f32: false,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// `model_type: "gemma"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: GemmaConfig = serde_json::from_value(value).context("gemma config")?;
    c.spec()?;
    Ok(Box::new(c))
}

llama_family_architecture!(GemmaConfig, "gemma");
