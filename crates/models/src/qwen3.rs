//! Qwen3: the Llama decoder ([`crate::llama`]'s layers) with an RMSNorm over each head's
//! queries and keys before the rotary embedding (`self_attn.q_norm`, `self_attn.k_norm`),
//! `head_dim` of its own (128 unless the config says otherwise), biases on the attention
//! projections only with `attention_bias`, tied or untied embeddings. Sliding-window layers
//! (`use_sliding_window`) are refused: released Qwen3 checkpoints leave them off.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::arch::{default_initializer_range, Activation, Architecture, CommonConfig};
use crate::backbone::RmsStyle;
use crate::llama::{d_rms_eps, d_silu, llama_family_architecture, DecoderSpec};
use crate::rope::RopeConfig;

// Defaults of transformers' `Qwen3Config` (configuration_qwen3.py).
fn qwen3_vocab_size() -> i64 {
    151936
}
fn qwen3_hidden_size() -> i64 {
    4096
}
fn qwen3_intermediate_size() -> i64 {
    22016
}
fn qwen3_layers() -> i64 {
    32
}
fn qwen3_heads() -> i64 {
    32
}
fn qwen3_kv_heads() -> Option<i64> {
    Some(32)
}
fn qwen3_head_dim() -> i64 {
    128
}
fn qwen3_positions() -> i64 {
    32768
}

/// Qwen3's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Qwen3Config {
    #[serde(default = "qwen3_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "qwen3_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "qwen3_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "qwen3_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "qwen3_heads")]
    pub num_attention_heads: i64,
    /// Absent: 32, as transformers' default; `null`: `num_attention_heads`.
    #[serde(default = "qwen3_kv_heads")]
    pub num_key_value_heads: Option<i64>,
    /// Not derived from the hidden size: 128 when absent, as transformers' default.
    #[serde(default = "qwen3_head_dim")]
    pub head_dim: i64,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default = "qwen3_positions")]
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
    /// Biases on `q_proj`, `k_proj`, `v_proj` and `o_proj`.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub use_sliding_window: bool,
    /// The layers from this one on slide when `use_sliding_window` is set.
    #[serde(default)]
    pub max_window_layers: Option<i64>,
    /// Per layer, `"full_attention"` or `"sliding_attention"` (transformers 5).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl Qwen3Config {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The layers that slide, as transformers derives them: `layer_types` when given (one
    /// `"full_attention"` or `"sliding_attention"` per layer), else with `use_sliding_window`
    /// those from `max_window_layers` (default 28) on.
    fn sliding_layers(&self) -> Result<Vec<i64>> {
        match &self.layer_types {
            Some(types) => {
                if types.len() as i64 != self.num_hidden_layers {
                    bail!(
                        "qwen3 layer_types: expected {} entries (num_hidden_layers), found {}",
                        self.num_hidden_layers,
                        types.len()
                    );
                }
                let mut sliding = Vec::new();
                for (i, t) in (0..).zip(types) {
                    match t.as_str() {
                        "full_attention" => {}
                        "sliding_attention" => sliding.push(i),
                        other => bail!(
                            "qwen3 layer_types[{i}]: {other:?} is not supported; supported: \
                             \"full_attention\""
                        ),
                    }
                }
                Ok(sliding)
            }
            None if self.use_sliding_window => {
                Ok((self.max_window_layers.unwrap_or(28).max(0)..self.num_hidden_layers).collect())
            }
            None => Ok(Vec::new()),
        }
    }

    /// The layers this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        let sliding = self.sliding_layers()?;
        if let Some(first) = sliding.first() {
            bail!(
                "qwen3: sliding-window attention (use_sliding_window, layer_types; layer {first} of {} slides) is not supported; supported: \"full_attention\" in every layer",
                self.num_hidden_layers
            );
        }
        let spec = DecoderSpec {
            model_type: "qwen3",
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_kv_heads(),
            head_dim: self.head_dim,
            act: Activation::parse(&self.hidden_act).context("qwen3 hidden_act")?,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: false,
            attention_dropout: self.attention_dropout,
            rope: RopeConfig::parse(
                "qwen3",
                self.rope_theta,
                &crate::rope::standardized(
                    "qwen3",
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
            embed_scale: None,
            norm_style: RmsStyle::Llama,
            qk_norm: true,
            nope_layers: Vec::new(),
            rope_in_f32: false,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// `model_type: "qwen3"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: Qwen3Config = serde_json::from_value(value).context("qwen3 config")?;
    c.spec()?;
    Ok(Box::new(c))
}

llama_family_architecture!(Qwen3Config, "qwen3");

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<DecoderSpec> {
        serde_json::from_str::<Qwen3Config>(json).unwrap().spec()
    }

    /// transformers' defaults: head_dim 128 whatever the width, 32 key-value heads when the
    /// key is absent (all heads when it is null), no biases, norms on queries and keys.
    #[test]
    fn defaults_are_transformers() {
        let s = spec(r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": null}"#)
            .unwrap();
        assert_eq!((s.head_dim, s.kv_heads), (128, 4));
        assert!(s.qk_norm && !s.qkv_bias && !s.o_bias && !s.mlp_bias);
        let s = spec(r#"{"num_attention_heads": 64, "attention_bias": true}"#).unwrap();
        assert_eq!(s.kv_heads, 32);
        assert!(s.qkv_bias && s.o_bias);
    }

    #[test]
    fn sliding_layers_are_refused_naming_the_first() {
        let err = spec(r#"{"num_hidden_layers": 4, "use_sliding_window": true, "max_window_layers": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("layer 2 of 4 slides"), "{err}");
        let err = spec(r#"{"num_hidden_layers": 2, "layer_types": ["full_attention", "sliding_attention"]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("layer 1 of 2"), "{err}");
        // The flag alone with every layer under max_window_layers slides nowhere.
        assert!(spec(r#"{"num_hidden_layers": 4, "use_sliding_window": true}"#).is_ok());
        assert!(spec(r#"{"layer_types": ["full_attention", "full_attention"], "num_hidden_layers": 2}"#).is_ok());
        let err = spec(r#"{"num_hidden_layers": 2, "layer_types": ["attention", "full_attention"]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("layer_types[0]: \"attention\" is not supported"), "{err}");
        let err = spec(r#"{"num_hidden_layers": 3, "layer_types": ["full_attention"]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 3 entries"), "{err}");
    }
}
