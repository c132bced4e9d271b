//! OLMo 3 (`model_type: "olmo3"`): OLMo 2's layers ([`crate::olmo2::Olmo2Layer`]: post-norms
//! only, whole-projection query and key norms, RoPE in f32) with three sliding-window layers
//! to each full one (`layer_types`, by default every fourth layer full, as transformers'
//! `Olmo3Config`) and a RoPE per layer type: `rope_parameters` per type (transformers 5), or
//! the flat `rope_theta` (base 500000) with `rope_scaling` on the full layers only. As there,
//! the flat `rope_theta` sets the full layers' base only; the sliding layers keep 500000 unless
//! their own entry says otherwise.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::arch::{
    default_initializer_range, sliding_flags, Activation, Architecture, CommonConfig, FULL,
    SLIDING,
};
use crate::backbone::{Backbone, Loader, RmsStyle};
use crate::heads::{Head, TaskHead};
use crate::llama::{d_silu, llama_family_architecture, DecoderSpec};
use crate::olmo2::Olmo2Layer;
use crate::rope::RopeConfig;

// Defaults of transformers' `Olmo3Config` (configuration_olmo3.py).
fn olmo3_vocab_size() -> i64 {
    50304
}
fn olmo3_hidden_size() -> i64 {
    4096
}
fn olmo3_intermediate_size() -> i64 {
    11008
}
fn olmo3_layers() -> i64 {
    32
}
fn olmo3_heads() -> i64 {
    32
}
fn olmo3_positions() -> i64 {
    2048
}
fn olmo3_pad() -> Option<i64> {
    Some(1)
}
fn olmo3_rms_eps() -> f64 {
    1e-5
}
fn olmo3_window() -> Option<i64> {
    Some(4096)
}
/// transformers' `Olmo3Config.default_theta`.
const OLMO3_THETA: f64 = 500_000.0;

/// OLMo 3's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Olmo3Config {
    #[serde(default = "olmo3_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "olmo3_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "olmo3_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "olmo3_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "olmo3_heads")]
    pub num_attention_heads: i64,
    /// `None` means `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// Read by transformers' attention when the config has it; else hidden / heads.
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default = "olmo3_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "olmo3_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "olmo3_pad")]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// transformers 5: `{"full_attention": {..}, "sliding_attention": {..}}`.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// Older configs: the full layers' base and scaling.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// Biases on `q_proj`, `k_proj`, `v_proj` and `o_proj`.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    /// The window of the `sliding_attention` layers.
    #[serde(default = "olmo3_window")]
    pub sliding_window: Option<i64>,
    /// Per layer, `"sliding_attention"` or `"full_attention"`; `None`: every fourth layer full.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl Olmo3Config {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether each layer uses the sliding window, checked against `num_hidden_layers`.
    pub fn sliding_layers(&self) -> Result<Vec<bool>> {
        match &self.layer_types {
            Some(types) => sliding_flags("olmo3", types, self.num_hidden_layers),
            // transformers: "sliding_attention" if (i + 1) % 4 != 0 else "full_attention".
            None => Ok((0..self.num_hidden_layers.max(0))
                .map(|i| (i + 1) % 4 != 0)
                .collect()),
        }
    }

    /// The full layers' and the sliding layers' RoPE, as transformers' Olmo3Config reads them.
    pub fn ropes(&self) -> Result<(RopeConfig, RopeConfig)> {
        let per_type = crate::rope::per_layer_type("olmo3", &self.rope_parameters)?;
        let parse = |ty: &str, theta: f64, scaling: &Option<Value>| {
            RopeConfig::parse(
                &format!("olmo3 {ty}"),
                Some(theta),
                &Some(crate::rope::updated_by(per_type.get(ty), scaling)?),
                self.head_dim(),
                self.max_position_embeddings,
            )
        };
        Ok((
            parse(FULL, self.rope_theta.unwrap_or(OLMO3_THETA), &self.rope_scaling)?,
            // transformers pops the flat rope_theta for the full layers: the sliding ones keep
            // the default unless their own entry gives one.
            parse(SLIDING, OLMO3_THETA, &None)?,
        ))
    }

    /// The embeddings, rotary tables (both types'), masks, final norm and heads (Llama's); the
    /// layers are OLMo 2's, the sliding ones windowed.
    pub fn spec(&self) -> Result<DecoderSpec> {
        let sliding = self.sliding_layers()?;
        match self.sliding_window {
            None if sliding.contains(&true) => bail!(
                "olmo3: sliding_window is null but layer_types has {SLIDING:?} layers; give a \
                 window or make every layer {FULL:?}"
            ),
            Some(w) if w < 1 => bail!("olmo3: sliding_window must be at least 1, found {w}"),
            _ => {}
        }
        let (rope, local_rope) = self.ropes()?;
        let spec = DecoderSpec {
            model_type: "olmo3",
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_kv_heads(),
            head_dim: self.head_dim(),
            act: Activation::parse(&self.hidden_act).context("olmo3 hidden_act")?,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: false,
            attention_dropout: self.attention_dropout,
            rope,
            local_rope: Some(local_rope),
            // Per layer (Olmo2Layer::window), not for the whole backbone.
            sliding_window: None,
            pad_token_id: self.pad_token_id,
            tie_word_embeddings: self.tie_word_embeddings,
            embed_scale: None,
            norm_style: RmsStyle::ScaledInF32,
            qk_norm: false,
            nope_layers: Vec::new(),
            rope_in_f32: true,
        };
        spec.validate()?;
        Ok(spec)
    }

    fn build_olmo3(
        &self,
        ld: &mut Loader,
        task: Head,
    ) -> Result<(Box<dyn Backbone + Send>, TaskHead)> {
        let spec = self.spec()?;
        let sliding = self.sliding_layers()?;
        spec.build_with(ld, task, |ld, prefix, i| {
            let mut layer = Olmo2Layer::load(ld, prefix, &spec)?;
            if sliding[i as usize] {
                layer.window = self.sliding_window;
            }
            Ok(layer)
        })
    }
}

/// `model_type: "olmo3"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: Olmo3Config = serde_json::from_value(value).context("olmo3 config")?;
    c.spec()?;
    Ok(Box::new(c))
}

// PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING has no "olmo3": Llama's q/v.
llama_family_architecture!(Olmo3Config, "olmo3", targets: ["q_proj", "v_proj"], build: build_olmo3);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: Value) -> Olmo3Config {
        serde_json::from_value(json).unwrap()
    }

    /// transformers' defaults: every fourth layer full, window 4096, base 500000 for both
    /// types; a flat rope_theta sets the full layers' only, rope_scaling too.
    #[test]
    fn defaults_and_rope_keys_follow_transformers() {
        let c = config(serde_json::json!({"num_hidden_layers": 8}));
        assert_eq!(
            c.sliding_layers().unwrap(),
            [true, true, true, false, true, true, true, false]
        );
        let (full, sliding) = c.ropes().unwrap();
        assert_eq!((full.theta, sliding.theta), (OLMO3_THETA, OLMO3_THETA));
        let c = config(serde_json::json!({"rope_theta": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0}}));
        let (full, sliding) = c.ropes().unwrap();
        assert_eq!((full.theta, sliding.theta), (1e4, OLMO3_THETA));
        assert_eq!(full.scaling, crate::rope::RopeScaling::Linear { factor: 2.0 });
        assert_eq!(sliding.scaling, crate::rope::RopeScaling::Default);
        let e = format!(
            "{:#}",
            parse(serde_json::json!({"model_type": "olmo3", "sliding_window": null})).unwrap_err()
        );
        assert!(e.contains("sliding_window is null"), "{e}");
    }
}
