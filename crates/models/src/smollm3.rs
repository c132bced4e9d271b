//! SmolLM3 (`model_type: "smollm3"`): the Llama decoder ([`crate::llama`]'s layers) with some
//! layers applying no rotary embedding ("NoPE": `no_rope_layers`, one 0/1 per layer, by
//! default every fourth layer without RoPE, `no_rope_layer_interval`), RoPE base 2e6 unless the
//! config says otherwise, tied embeddings. Sliding-window layers (`use_sliding_window`) are
//! refused: released SmolLM3 checkpoints leave them off.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::arch::{
    default_initializer_range, default_true, sliding_flags, Activation, Architecture, CommonConfig,
};
use crate::backbone::RmsStyle;
use crate::llama::{d_rms_eps, d_silu, llama_family_architecture, DecoderSpec};
use crate::rope::RopeConfig;

// Defaults of transformers' `SmolLM3Config` (configuration_smollm3.py).
fn smollm3_vocab_size() -> i64 {
    128256
}
fn smollm3_hidden_size() -> i64 {
    2048
}
fn smollm3_intermediate_size() -> i64 {
    11008
}
fn smollm3_layers() -> i64 {
    36
}
fn smollm3_heads() -> i64 {
    16
}
fn smollm3_kv_heads() -> Option<i64> {
    Some(4)
}
fn smollm3_positions() -> i64 {
    32768
}
fn smollm3_pad() -> Option<i64> {
    Some(128004)
}
fn smollm3_interval() -> i64 {
    4
}
/// transformers' `SmolLM3Config.default_theta`.
const SMOLLM3_THETA: f64 = 2_000_000.0;

/// SmolLM3's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SmolLM3Config {
    #[serde(default = "smollm3_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "smollm3_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "smollm3_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "smollm3_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "smollm3_heads")]
    pub num_attention_heads: i64,
    /// Read by transformers' attention when the config has it; else hidden / heads.
    #[serde(default)]
    pub head_dim: Option<i64>,
    /// Absent: 4, as transformers' default; `null`: `num_attention_heads`.
    #[serde(default = "smollm3_kv_heads")]
    pub num_key_value_heads: Option<i64>,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default = "smollm3_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "smollm3_pad")]
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
    /// Per layer, 1 where the rotary embedding applies, 0 where it does not.
    #[serde(default)]
    pub no_rope_layers: Option<Vec<i64>>,
    /// Without `no_rope_layers`: every this-many-th layer has no RoPE.
    #[serde(default = "smollm3_interval")]
    pub no_rope_layer_interval: i64,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub sliding_window: Option<i64>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl SmolLM3Config {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The layers without RoPE, as transformers derives them.
    pub fn nope_layers(&self) -> Result<Vec<i64>> {
        let n = self.num_hidden_layers;
        match &self.no_rope_layers {
            Some(flags) => {
                if flags.len() as i64 != n {
                    bail!(
                        "smollm3 no_rope_layers: expected {n} entries (num_hidden_layers), found {}",
                        flags.len()
                    );
                }
                Ok((0..).zip(flags).filter(|(_, &f)| f == 0).map(|(i, _)| i).collect())
            }
            None => {
                if self.no_rope_layer_interval < 1 {
                    bail!(
                        "smollm3: no_rope_layer_interval must be at least 1, found {}",
                        self.no_rope_layer_interval
                    );
                }
                // transformers: int((i + 1) % interval != 0), 1 meaning RoPE.
                Ok((0..n)
                    .filter(|i| (i + 1) % self.no_rope_layer_interval == 0)
                    .collect())
            }
        }
    }

    /// The layers this config describes. Sliding layers are refused: those `layer_types`
    /// names (transformers' masks apply `sliding_window` to them whatever
    /// `use_sliding_window` says), or, without `layer_types`, the layers without RoPE under
    /// `use_sliding_window` with a window.
    pub fn spec(&self) -> Result<DecoderSpec> {
        let sliding = match &self.layer_types {
            Some(types) => sliding_flags("smollm3", types, self.num_hidden_layers)?
                .iter()
                .position(|&s| s),
            None if self.use_sliding_window && self.sliding_window.is_some() => {
                self.nope_layers()?.first().map(|&i| i as usize)
            }
            None => None,
        };
        if let Some(i) = sliding {
            bail!(
                "smollm3: sliding-window attention (layer {i}: layer_types, or use_sliding_window \
                 with sliding_window on the layers without RoPE) is not supported; supported: \
                 \"full_attention\" in every layer"
            );
        }
        let spec = DecoderSpec {
            model_type: "smollm3",
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_kv_heads(),
            head_dim: self.head_dim(),
            act: Activation::parse(&self.hidden_act).context("smollm3 hidden_act")?,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            attention_dropout: self.attention_dropout,
            rope: RopeConfig::parse(
                "smollm3",
                Some(self.rope_theta.unwrap_or(SMOLLM3_THETA)),
                &crate::rope::standardized(
                    "smollm3",
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
            nope_layers: self.nope_layers()?,
            rope_in_f32: false,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// `model_type: "smollm3"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: SmolLM3Config = serde_json::from_value(value).context("smollm3 config")?;
    c.spec()?;
    Ok(Box::new(c))
}

llama_family_architecture!(SmolLM3Config, "smollm3");

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: Value) -> SmolLM3Config {
        serde_json::from_value(json).unwrap()
    }

    /// transformers' defaults: every fourth layer without RoPE, base 2e6, 4 key-value heads.
    #[test]
    fn defaults_follow_transformers() {
        let c = config(serde_json::json!({"num_hidden_layers": 8}));
        let s = c.spec().unwrap();
        assert_eq!(s.nope_layers, [3, 7]);
        assert_eq!((s.rope.theta, s.kv_heads), (SMOLLM3_THETA, 4));
        assert!(s.tie_word_embeddings);
        let c = config(serde_json::json!({"num_hidden_layers": 3, "no_rope_layers": [1, 0, 1]}));
        assert_eq!(c.nope_layers().unwrap(), [1]);
        let e = config(serde_json::json!({"num_hidden_layers": 3, "no_rope_layers": [1, 0]}))
            .spec()
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 3 entries"), "{e}");
        let e = config(serde_json::json!({"num_hidden_layers": 4, "use_sliding_window": true, "sliding_window": 8}))
            .spec()
            .unwrap_err()
            .to_string();
        assert!(e.contains("sliding-window"), "{e}");
        // transformers' masks slide on layer_types' sliding layers even without the flag.
        let e = config(serde_json::json!({"num_hidden_layers": 2, "sliding_window": 8,
            "layer_types": ["full_attention", "sliding_attention"]}))
        .spec()
        .unwrap_err()
        .to_string();
        assert!(e.contains("layer 1"), "{e}");
        let e = config(serde_json::json!({"num_hidden_layers": 2, "layer_types": ["full_attention"]}))
            .spec()
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 2 entries"), "{e}");
        // A head_dim of the config's own, as transformers' attention reads it.
        let c = config(serde_json::json!({"hidden_size": 32, "num_attention_heads": 4, "head_dim": 16}));
        assert_eq!(c.spec().unwrap().head_dim, 16);
    }
}
