//! Gemma 2: Gemma's decoder (embeddings scaled by `sqrt(hidden_size)`, RMSNorm scaling by
//! `1 + weight` in f32, GeGLU with tanh GELU (`hidden_activation`), a `head_dim` of its own,
//! tied LM head) with four norms per layer (`input_layernorm` and `post_attention_layernorm`
//! around the attention, `pre_feedforward_layernorm` and `post_feedforward_layernorm` around
//! the MLP, each output normed before its residual sum), attention scores scaled by
//! `query_pre_attn_scalar^-0.5` and soft-capped (`attn_logit_softcapping`), the causal-LM
//! logits soft-capped (`final_logit_softcapping`), and layers alternating between a sliding
//! window and full attention (`layer_types`; by default the even layers slide, as
//! transformers' `Gemma2Config`), in training, evaluation and generation alike.
//! Bidirectional attention (`use_bidirectional_attention`) is refused. transformers reads
//! `hidden_activation` only; a `hidden_act` key, which Gemma 2 configs also carry, must agree.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use tch::{Kind, Tensor};

use crate::arch::{
    default_initializer_range, default_true, sliding_flags, Activation, Architecture, CommonConfig,
    FULL, SLIDING,
};
use crate::attention::{sdpa, KvCache, LayerCtx};
use crate::backbone::{Backbone, Block, Loader, RmsNorm, RmsStyle};
use crate::heads::{soft_cap, Head, TaskHead};
use crate::llama::{d_rms_eps, llama_family_architecture, DecoderSpec, LlamaLayer};
use crate::rope::RopeConfig;

// Defaults of transformers' `Gemma2Config` (configuration_gemma2.py).
fn gemma2_vocab_size() -> i64 {
    256000
}
fn gemma2_hidden_size() -> i64 {
    2304
}
fn gemma2_intermediate_size() -> i64 {
    9216
}
fn gemma2_layers() -> i64 {
    26
}
fn gemma2_heads() -> i64 {
    8
}
fn gemma2_kv_heads() -> Option<i64> {
    Some(4)
}
fn gemma2_head_dim() -> i64 {
    256
}
fn gemma2_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn gemma2_positions() -> i64 {
    8192
}
fn gemma2_pad() -> Option<i64> {
    Some(0)
}
fn gemma2_query_pre_attn_scalar() -> f64 {
    256.0
}
fn gemma2_window() -> Option<i64> {
    Some(4096)
}
fn gemma2_final_softcap() -> Option<f64> {
    Some(30.0)
}
fn gemma2_attn_softcap() -> Option<f64> {
    Some(50.0)
}


/// Gemma 2's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Gemma2Config {
    #[serde(default = "gemma2_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "gemma2_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "gemma2_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "gemma2_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "gemma2_heads")]
    pub num_attention_heads: i64,
    /// `null` means `num_attention_heads`.
    #[serde(default = "gemma2_kv_heads")]
    pub num_key_value_heads: Option<i64>,
    #[serde(default = "gemma2_head_dim")]
    pub head_dim: i64,
    #[serde(default = "gemma2_act")]
    pub hidden_activation: String,
    /// Not read by transformers' Gemma 2; when present it must name the same function.
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default = "gemma2_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "gemma2_pad")]
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
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5` (not `head_dim^-0.5`).
    #[serde(default = "gemma2_query_pre_attn_scalar")]
    pub query_pre_attn_scalar: f64,
    /// The window of the `sliding_attention` layers.
    #[serde(default = "gemma2_window")]
    pub sliding_window: Option<i64>,
    /// Per layer, `"sliding_attention"` or `"full_attention"`; `None`: the even layers slide.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// `null`: no capping.
    #[serde(default = "gemma2_final_softcap")]
    pub final_logit_softcapping: Option<f64>,
    /// `null`: no capping.
    #[serde(default = "gemma2_attn_softcap")]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl Gemma2Config {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Whether each layer uses the sliding window, checked against `num_hidden_layers`.
    pub fn sliding_layers(&self) -> Result<Vec<bool>> {
        let n = self.num_hidden_layers.max(0) as usize;
        let Some(types) = &self.layer_types else {
            // transformers: "sliding_attention" if (i + 1) % 2 else "full_attention".
            return Ok((0..n).map(|i| (i + 1) % 2 == 1).collect());
        };
        sliding_flags("gemma2", types, self.num_hidden_layers)
    }

    /// The embeddings, rotary tables, masks, final norm and heads (Gemma's, on Llama's
    /// backbone); the layers are [`Gemma2Layer`]s.
    pub fn spec(&self) -> Result<DecoderSpec> {
        if self.use_bidirectional_attention == Some(true) {
            bail!("gemma2: use_bidirectional_attention is not supported; supported: causal attention (false or null)");
        }
        let act = Activation::parse(&self.hidden_activation).context("gemma2 hidden_activation")?;
        if let Some(other) = &self.hidden_act {
            if Activation::parse(other).ok() != Some(act) {
                bail!(
                    "gemma2: hidden_act {other:?} differs from hidden_activation {:?}, which \
                     transformers' Gemma 2 uses; make them agree",
                    self.hidden_activation
                );
            }
        }
        let sliding = self.sliding_layers()?;
        match self.sliding_window {
            None if sliding.contains(&true) => bail!(
                "gemma2: sliding_window is null but layer_types has {SLIDING:?} layers; give a \
                 window or make every layer {FULL:?}"
            ),
            Some(w) if w < 1 => bail!("gemma2: sliding_window must be at least 1, found {w}"),
            _ => {}
        }
        for (name, cap) in [
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
        ] {
            if let Some(c) = cap {
                if c <= 0.0 {
                    bail!("gemma2: {name} must be positive or null, found {c}");
                }
            }
        }
        if self.query_pre_attn_scalar <= 0.0 {
            bail!(
                "gemma2: query_pre_attn_scalar must be positive, found {}",
                self.query_pre_attn_scalar
            );
        }
        let spec = DecoderSpec {
            model_type: "gemma2",
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
            rope: RopeConfig::parse(
                "gemma2",
                self.rope_theta,
                &crate::rope::standardized(
                    "gemma2",
                    &self.rope_parameters,
                    &self.rope_scaling,
                    self.original_max_position_embeddings,
                ),
                self.head_dim,
                self.max_position_embeddings,
            )?,
            local_rope: None,
            // Per layer (Gemma2Layer::window), not for the whole backbone.
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

    fn build_gemma2(
        &self,
        ld: &mut Loader,
        task: Head,
    ) -> Result<(Box<dyn Backbone + Send>, TaskHead)> {
        let spec = self.spec()?;
        let sliding = self.sliding_layers()?;
        let (backbone, head) = spec.build_with(ld, task, |ld, prefix, i| {
            let window = if sliding[i as usize] {
                self.sliding_window
            } else {
                None
            };
            let attn = Gemma2Attention {
                scale: self.query_pre_attn_scalar.powf(-0.5),
                softcap: self.attn_logit_softcapping,
                window,
                local_rope: false,
            };
            Gemma2Layer::load(ld, prefix, &spec, attn)
        })?;
        // The causal-LM logits are capped (`Gemma2ForCausalLM`); the classifier's are not.
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

/// `model_type: "gemma2"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: Gemma2Config = serde_json::from_value(value).context("gemma2 config")?;
    c.spec()?;
    Ok(Box::new(c))
}

// PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING: "gemma2": ["q_proj", "v_proj"].
llama_family_architecture!(Gemma2Config, "gemma2", targets: ["q_proj", "v_proj"], build: build_gemma2);

/// The attention options of one Gemma 2 (or Gemma 3) layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemma2Attention {
    /// `query_pre_attn_scalar^-0.5`.
    pub scale: f64,
    /// `attn_logit_softcapping`.
    pub softcap: Option<f64>,
    /// `Some(sliding_window)` on a `sliding_attention` layer.
    pub window: Option<i64>,
    /// The layer takes the local rotary tables ([`LayerCtx::with_local_rope`]: Gemma 3's
    /// sliding layers).
    pub local_rope: bool,
}

/// One Gemma 2 decoder layer: Llama's projections and first two norms (same module names),
/// the feed-forward norms, and its attention's scale, soft-cap and window. Gemma 3's layers are
/// these with query and key norms ([`DecoderSpec::qk_norm`]) and local rotary tables.
#[derive(Debug)]
pub struct Gemma2Layer {
    /// `input_layernorm`, `self_attn.{q,k,v,o}_proj` (and `q_norm`, `k_norm`),
    /// `post_attention_layernorm` (applied to the attention output here),
    /// `mlp.{gate,up,down}_proj`.
    pub base: LlamaLayer,
    pub pre_feedforward_layernorm: RmsNorm,
    pub post_feedforward_layernorm: RmsNorm,
    pub attn: Gemma2Attention,
}

impl Gemma2Layer {
    pub fn load(
        ld: &mut Loader,
        p: &str,
        spec: &DecoderSpec,
        attn: Gemma2Attention,
    ) -> Result<Self> {
        let base = LlamaLayer::load(ld, p, spec)?;
        let norm = |ld: &mut Loader, name: &str| {
            ld.rms_norm_with(
                &format!("{p}.{name}"),
                spec.hidden_size,
                spec.rms_norm_eps,
                RmsStyle::UnitOffset,
            )
        };
        Ok(Gemma2Layer {
            base,
            pre_feedforward_layernorm: norm(ld, "pre_feedforward_layernorm")?,
            post_feedforward_layernorm: norm(ld, "post_feedforward_layernorm")?,
            attn,
        })
    }

    /// The layer; with `cache`, keys (after rotary) and values of earlier positions are
    /// prepended from it and this call's appended to it.
    fn forward_inner(
        &self,
        x: &Tensor,
        ctx: &LayerCtx,
        train: bool,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        let local;
        let ctx = if self.attn.local_rope {
            local = ctx.with_local_rope();
            &local
        } else {
            ctx
        };
        let l = &self.base;
        let (q, k, v) = l.attention_inputs(&l.input_norm(x), ctx, train, None, cache);
        let mask = ctx.layer_mask(self.attn.window);
        let p = if train { l.attention_dropout } else { 0.0 };
        let scale = self.attn.scale;
        let a = match self.attn.softcap {
            Some(c) => capped_attention(&q, &k, &v, &mask, scale, c, p),
            None => sdpa(&q, &k, &v, &mask, p, train, Some(scale)),
        };
        let a = l.o_proj.forward_t(&ctx.merge_heads(&a), train);
        let x = ctx.query_rows(x) + l.post_attention_layernorm.forward(&a);
        let m = l.mlp(&self.pre_feedforward_layernorm.forward(&x), train);
        x + self.post_feedforward_layernorm.forward(&m)
    }
}

/// Attention with soft-capped scores, as transformers' eager Gemma 2 attention:
/// `softmax(mask(c * tanh(q k^T * scale / c))) v`, the softmax in f32 then cast back, dropout
/// `p` on the probabilities (0 outside training). Grouped-query attention when `k`, `v` have
/// fewer heads than `q`.
fn capped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    cap: f64,
    p: f64,
) -> Tensor {
    let (hq, hkv) = (q.size()[1], k.size()[1]);
    let (k, v) = if hq != hkv {
        let rep = hq / hkv;
        (
            k.repeat_interleave_self_int(rep, 1, None),
            v.repeat_interleave_self_int(rep, 1, None),
        )
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let scores = soft_cap(&(q.matmul(&k.transpose(-2, -1)) * scale), cap);
    let scores = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind());
    loraplus_core::dropout::dropout(&probs, p, true).matmul(&v)
}

impl Block for Gemma2Layer {
    fn forward_t(&self, x: &Tensor, ctx: &LayerCtx, train: bool) -> Tensor {
        self.forward_inner(x, ctx, train, None)
    }

    fn forward_cached(&self, x: &Tensor, ctx: &LayerCtx, cache: &mut KvCache) -> Result<Tensor> {
        Ok(self.forward_inner(x, ctx, false, Some(cache)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(json: serde_json::Value) -> String {
        format!("{:#}", parse(json).expect_err("should be refused"))
    }

    /// transformers' defaults (Gemma 2 2B); PEFT's targets.
    #[test]
    fn defaults_follow_transformers() {
        let a = parse(serde_json::json!({"model_type": "gemma2"})).unwrap();
        let c = a.as_any().downcast_ref::<Gemma2Config>().unwrap();
        assert_eq!((c.head_dim, c.num_kv_heads(), c.sliding_window), (256, 4, Some(4096)));
        assert_eq!(c.query_pre_attn_scalar, 256.0);
        assert!(c.tie_word_embeddings);
        assert_eq!(a.recommended_lora_modules().0, ["q_proj", "v_proj"]);
    }

    #[test]
    fn layer_types_default_to_even_layers_sliding_and_are_checked() {
        let c: Gemma2Config = serde_json::from_value(serde_json::json!({
            "model_type": "gemma2", "num_hidden_layers": 4
        }))
        .unwrap();
        assert_eq!(c.sliding_layers().unwrap(), [true, false, true, false]);
        let e = parse_err(serde_json::json!({"model_type": "gemma2", "num_hidden_layers": 2,
            "layer_types": ["sliding_attention", "chunked_attention"]}));
        assert!(e.contains("\"chunked_attention\"") && e.contains("layer_types[1]"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "gemma2", "num_hidden_layers": 2,
            "layer_types": ["full_attention"]}));
        assert!(e.contains("expected 2 entries"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "gemma2", "sliding_window": null}));
        assert!(e.contains("sliding_window is null"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "gemma2",
            "use_bidirectional_attention": true}));
        assert!(e.contains("use_bidirectional_attention"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "gemma2", "hidden_act": "silu"}));
        assert!(e.contains("hidden_act") && e.contains("hidden_activation"), "{e}");
        let e = parse_err(serde_json::json!({"model_type": "gemma2",
            "attn_logit_softcapping": 0.0}));
        assert!(e.contains("attn_logit_softcapping"), "{e}");
        // `null` turns the capping off.
        let c: Gemma2Config = serde_json::from_value(serde_json::json!({
            "model_type": "gemma2", "final_logit_softcapping": null
        }))
        .unwrap();
        assert_eq!(c.final_logit_softcapping, None);
        assert_eq!(c.attn_logit_softcapping, Some(50.0));
    }
}
