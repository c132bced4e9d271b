//! Gemma 3 (text; `model_type: "gemma3_text"`, `Gemma3ForCausalLM`): Gemma 2's layers
//! ([`crate::gemma2::Gemma2Layer`]: four norms, scores scaled by `query_pre_attn_scalar^-0.5`,
//! embeddings scaled by `sqrt(hidden_size)`, `1 + weight` RMSNorm, tied head) with an RMSNorm
//! over each head's queries and keys before RoPE (`self_attn.q_norm`, `k_norm`), five
//! sliding-window layers to each full one (`layer_types`, by default every sixth layer full, as
//! transformers' `sliding_window_pattern` 6) and two RoPEs: the full layers' (`rope_theta` 1e6
//! by default, with the scaling, e.g. linear 8 for the 4B+ models) and the sliding layers'
//! own base (`rope_local_base_freq`, 1e4), read from transformers 5's per-layer-type
//! `rope_parameters` or the older flat keys. The logits are soft-capped when the config sets
//! `final_logit_softcapping`; `attn_logit_softcapping` is ignored, as transformers ignores it.
//! The multimodal `gemma3` checkpoints (`Gemma3ForConditionalGeneration`) and bidirectional
//! attention (EmbeddingGemma) are refused.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::arch::{
    default_initializer_range, default_true, sliding_flags, Activation, Architecture, CommonConfig,
    FULL, SLIDING,
};
use crate::backbone::{Backbone, Loader, RmsStyle};
use crate::gemma2::{Gemma2Attention, Gemma2Layer};
use crate::heads::{Head, TaskHead};
use crate::llama::{d_rms_eps, llama_family_architecture, DecoderSpec};
use crate::rope::RopeConfig;

// Defaults of transformers' `Gemma3TextConfig` (configuration_gemma3.py).
fn gemma3_vocab_size() -> i64 {
    262_208
}
fn gemma3_hidden_size() -> i64 {
    2304
}
fn gemma3_intermediate_size() -> i64 {
    9216
}
fn gemma3_layers() -> i64 {
    26
}
fn gemma3_heads() -> i64 {
    8
}
fn gemma3_kv_heads() -> Option<i64> {
    Some(4)
}
fn gemma3_head_dim() -> i64 {
    256
}
fn gemma3_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn gemma3_positions() -> i64 {
    131_072
}
fn gemma3_pad() -> Option<i64> {
    Some(0)
}
fn gemma3_query_pre_attn_scalar() -> f64 {
    256.0
}
fn gemma3_window() -> Option<i64> {
    Some(4096)
}
fn gemma3_pattern() -> i64 {
    6
}
/// transformers' `Gemma3TextConfig.default_theta`.
const GLOBAL_THETA: f64 = 1_000_000.0;
const LOCAL_THETA: f64 = 10_000.0;


/// Gemma 3's text `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Gemma3TextConfig {
    #[serde(default = "gemma3_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "gemma3_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "gemma3_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "gemma3_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "gemma3_heads")]
    pub num_attention_heads: i64,
    /// `null` means `num_attention_heads`.
    #[serde(default = "gemma3_kv_heads")]
    pub num_key_value_heads: Option<i64>,
    #[serde(default = "gemma3_head_dim")]
    pub head_dim: i64,
    #[serde(default = "gemma3_act")]
    pub hidden_activation: String,
    /// Not read by transformers' Gemma 3; when present it must name the same function.
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default = "gemma3_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "gemma3_pad")]
    pub pad_token_id: Option<i64>,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// transformers 5: `{"full_attention": {..}, "sliding_attention": {..}}`.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// Older configs: the full layers' base, ...
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// ... the sliding layers' base ...
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    /// ... and the full layers' scaling.
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default = "gemma3_query_pre_attn_scalar")]
    pub query_pre_attn_scalar: f64,
    #[serde(default = "gemma3_window")]
    pub sliding_window: Option<i64>,
    /// Per layer, `"sliding_attention"` or `"full_attention"`; `None`: every
    /// `sliding_window_pattern`-th layer is full.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "gemma3_pattern")]
    pub sliding_window_pattern: i64,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl Gemma3TextConfig {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Whether each layer uses the sliding window, checked against `num_hidden_layers`.
    pub fn sliding_layers(&self) -> Result<Vec<bool>> {
        let n = self.num_hidden_layers.max(0) as usize;
        let Some(types) = &self.layer_types else {
            if self.sliding_window_pattern < 1 {
                bail!(
                    "gemma3_text: sliding_window_pattern must be at least 1, found {}",
                    self.sliding_window_pattern
                );
            }
            // transformers: "sliding_attention" if (i + 1) % pattern else "full_attention".
            let pattern = self.sliding_window_pattern as usize;
            return Ok((0..n).map(|i| (i + 1) % pattern != 0).collect());
        };
        sliding_flags("gemma3_text", types, self.num_hidden_layers)
    }

    /// The full layers' and the sliding layers' RoPE, as transformers'
    /// `convert_rope_params_to_dict` reads them: per layer type from `rope_parameters` (a type
    /// it lacks is `{"rope_type": "default"}`), each base defaulting to the flat `rope_theta` /
    /// `rope_local_base_freq`, else 1e6 / 1e4; the flat `rope_scaling` updates the full layers'
    /// parameters, its keys winning (so a legacy `{"type": "linear"}` under the prefilled
    /// `rope_type: "default"` scales nothing, as there).
    pub fn ropes(&self) -> Result<(RopeConfig, RopeConfig)> {
        let per_type = crate::rope::per_layer_type("gemma3_text", &self.rope_parameters)?;
        let parse = |ty: &str, theta: f64, scaling: &Option<Value>| {
            RopeConfig::parse(
                &format!("gemma3_text {ty}"),
                Some(theta),
                &Some(crate::rope::updated_by(per_type.get(ty), scaling)?),
                self.head_dim,
                self.max_position_embeddings,
            )
        };
        let full = parse(
            FULL,
            self.rope_theta.unwrap_or(GLOBAL_THETA),
            &self.rope_scaling,
        )?;
        let sliding = parse(
            SLIDING,
            self.rope_local_base_freq.unwrap_or(LOCAL_THETA),
            &None,
        )?;
        Ok((full, sliding))
    }

    /// The embeddings, rotary tables, masks, final norm and heads (Gemma's, on Llama's
    /// backbone, with the sliding layers' RoPE as the local one); the layers are
    /// [`Gemma2Layer`]s with query and key norms.
    pub fn spec(&self) -> Result<DecoderSpec> {
        if self.use_bidirectional_attention == Some(true) {
            bail!("gemma3_text: use_bidirectional_attention (EmbeddingGemma) is not supported; supported: causal attention (false or null)");
        }
        let act =
            Activation::parse(&self.hidden_activation).context("gemma3_text hidden_activation")?;
        if let Some(other) = &self.hidden_act {
            if Activation::parse(other).ok() != Some(act) {
                bail!(
                    "gemma3_text: hidden_act {other:?} differs from hidden_activation {:?}, which \
                     transformers' Gemma 3 uses; make them agree",
                    self.hidden_activation
                );
            }
        }
        let sliding = self.sliding_layers()?;
        match self.sliding_window {
            None if sliding.contains(&true) => bail!(
                "gemma3_text: sliding_window is null but layer_types has {SLIDING:?} layers; give \
                 a window or make every layer {FULL:?}"
            ),
            Some(w) if w < 1 => bail!("gemma3_text: sliding_window must be at least 1, found {w}"),
            _ => {}
        }
        for (name, cap) in [
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
        ] {
            if let Some(c) = cap {
                if c <= 0.0 {
                    bail!("gemma3_text: {name} must be positive or null, found {c}");
                }
            }
        }
        if self.query_pre_attn_scalar <= 0.0 {
            bail!(
                "gemma3_text: query_pre_attn_scalar must be positive, found {}",
                self.query_pre_attn_scalar
            );
        }
        if let Some(c) = self.attn_logit_softcapping {
            tracing::warn!(
                "gemma3_text: attn_logit_softcapping ({c}) is ignored, as transformers' Gemma 3 \
                 ignores it (its query and key norms replace Gemma 2's capping)"
            );
        }
        let (rope, local_rope) = self.ropes()?;
        let spec = DecoderSpec {
            model_type: "gemma3_text",
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_kv_heads(),
            head_dim: self.head_dim,
            act,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: false,
            attention_dropout: self.attention_dropout,
            rope,
            local_rope: Some(local_rope),
            // Per layer (Gemma2Attention::window), not for the whole backbone.
            sliding_window: None,
            pad_token_id: self.pad_token_id,
            tie_word_embeddings: self.tie_word_embeddings,
            embed_scale: Some((self.hidden_size as f64).sqrt()),
            norm_style: RmsStyle::UnitOffset,
            qk_norm: true,
            nope_layers: Vec::new(),
            rope_in_f32: false,
        };
        spec.validate()?;
        Ok(spec)
    }

    fn build_gemma3(
        &self,
        ld: &mut Loader,
        task: Head,
    ) -> Result<(Box<dyn Backbone + Send>, TaskHead)> {
        let spec = self.spec()?;
        let sliding = self.sliding_layers()?;
        let (backbone, head) = spec.build_with(ld, task, |ld, prefix, i| {
            let slides = sliding[i as usize];
            let attn = Gemma2Attention {
                scale: self.query_pre_attn_scalar.powf(-0.5),
                // transformers' Gemma 3 keeps attn_logit_softcapping but never applies it.
                softcap: None,
                window: if slides { self.sliding_window } else { None },
                local_rope: slides,
            };
            Gemma2Layer::load(ld, prefix, &spec, attn)
        })?;
        // The causal-LM logits are capped when the config says so; the classifier's are not.
        let head = match head {
            TaskHead::Lm { lm_head, .. } => TaskHead::Lm {
                lm_head,
                softcap: self.final_logit_softcapping,
            },
            other => other,
        };
        Ok((backbone, head))
    }
}

/// `model_type: "gemma3_text"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: Gemma3TextConfig = serde_json::from_value(value).context("gemma3_text config")?;
    c.spec()?;
    Ok(Box::new(c))
}

// PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING: "gemma3_text": ["q_proj", "v_proj"].
llama_family_architecture!(Gemma3TextConfig, "gemma3_text", targets: ["q_proj", "v_proj"], build: build_gemma3);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> Gemma3TextConfig {
        serde_json::from_value(json).unwrap()
    }

    fn parse_err(json: serde_json::Value) -> String {
        format!("{:#}", parse(json).expect_err("should be refused"))
    }

    /// transformers' defaults: every sixth layer full, bases 1e6 and 1e4, no soft-capping,
    /// tied head, PEFT's targets.
    #[test]
    fn defaults_follow_transformers() {
        let a = parse(serde_json::json!({"model_type": "gemma3_text"})).unwrap();
        let c = a.as_any().downcast_ref::<Gemma3TextConfig>().unwrap();
        let sliding = c.sliding_layers().unwrap();
        assert_eq!(sliding.len(), 26);
        let full: Vec<usize> = (0..26).filter(|&i| !sliding[i]).collect();
        assert_eq!(full, [5, 11, 17, 23]);
        let (global, local) = c.ropes().unwrap();
        assert_eq!((global.theta, local.theta), (GLOBAL_THETA, LOCAL_THETA));
        assert_eq!((c.final_logit_softcapping, c.attn_logit_softcapping), (None, None));
        assert!(c.tie_word_embeddings && c.spec().unwrap().qk_norm);
        assert_eq!(a.recommended_lora_modules().0, ["q_proj", "v_proj"]);
    }

    /// The older flat keys and transformers 5's per-type parameters give the same RoPEs; the
    /// flat scaling is the full layers'.
    #[test]
    fn rope_keys_old_and_new_agree() {
        let old = config(serde_json::json!({"rope_theta": 5e5, "rope_local_base_freq": 2e4,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window_pattern": 2,
            "num_hidden_layers": 4}));
        let new = config(serde_json::json!({"rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 5e5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}},
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            "num_hidden_layers": 4}));
        assert_eq!(old.ropes().unwrap(), new.ropes().unwrap());
        assert_eq!(old.sliding_layers().unwrap(), new.sliding_layers().unwrap());
        let (global, local) = old.ropes().unwrap();
        assert_eq!((global.theta, local.theta), (5e5, 2e4));
        assert_ne!(global, local);
    }

    /// The flat `rope_scaling` updates the full layers' prefilled `{"rope_type": "default"}`:
    /// its legacy `type` key scales nothing (transformers reads `rope_type`), its `rope_type`
    /// wins over a per-type entry's.
    #[test]
    fn rope_scaling_updates_the_full_layers_as_transformers() {
        let legacy = config(serde_json::json!({"rope_scaling": {"type": "linear", "factor": 8.0}}));
        let (full, _) = legacy.ropes().unwrap();
        assert_eq!(full.scaling, crate::rope::RopeScaling::Default);
        let over = config(serde_json::json!({
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 5e5}},
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}}));
        let (full, local) = over.ropes().unwrap();
        assert_eq!(full.scaling, crate::rope::RopeScaling::Linear { factor: 8.0 });
        assert_eq!((full.theta, local.theta), (5e5, LOCAL_THETA));
    }

    #[test]
    fn bad_configs_are_refused() {
        let e = parse_err(serde_json::json!({"model_type": "gemma3_text",
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}));
        assert!(e.contains("one object per layer type") && e.contains("\"rope_type\""), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "gemma3_text",
            "use_bidirectional_attention": true}));
        assert!(e.contains("use_bidirectional_attention"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "gemma3_text", "num_hidden_layers": 2,
            "layer_types": ["sliding_attention", "chunked_attention"]}));
        assert!(e.contains("layer_types[1]"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "gemma3_text", "sliding_window_pattern": 0}));
        assert!(e.contains("sliding_window_pattern"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "gemma3_text", "sliding_window": null}));
        assert!(e.contains("sliding_window is null"), "{e}");
    }
}
