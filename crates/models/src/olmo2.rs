//! OLMo 2 (`model_type: "olmo2"`): Llama's embeddings, rotary tables, masks, final norm and
//! heads with layers of its own: no norm before the attention or the MLP, but one after each
//! (`post_attention_layernorm`, `post_feedforward_layernorm`, each output normed before its
//! residual sum), and an RMSNorm over the whole query and key projections
//! (`self_attn.q_norm` of width `heads * head_dim`, `k_norm` of `kv_heads * head_dim`) before
//! they are split into heads and rotated. Its RMSNorms scale by the weight in f32
//! ([`RmsStyle::ScaledInF32`]).

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;
use tch::Tensor;

use crate::arch::{default_initializer_range, Activation, Architecture, CommonConfig};
use crate::attention::{sdpa, KvCache, LayerCtx};
use crate::backbone::{Backbone, Block, Loader, RmsNorm, RmsStyle};
use crate::heads::{Head, TaskHead};
use crate::llama::{d_silu, llama_family_architecture, DecoderSpec, LlamaLayer};
use crate::rope::RopeConfig;

// Defaults of transformers' `Olmo2Config` (configuration_olmo2.py).
fn olmo2_vocab_size() -> i64 {
    50304
}
fn olmo2_hidden_size() -> i64 {
    4096
}
fn olmo2_intermediate_size() -> i64 {
    11008
}
fn olmo2_layers() -> i64 {
    32
}
fn olmo2_heads() -> i64 {
    32
}
fn olmo2_positions() -> i64 {
    2048
}
fn olmo2_pad() -> Option<i64> {
    Some(1)
}
fn olmo2_rms_eps() -> f64 {
    1e-5
}

/// OLMo 2's `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Olmo2Config {
    #[serde(default = "olmo2_vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "olmo2_hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "olmo2_intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "olmo2_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "olmo2_heads")]
    pub num_attention_heads: i64,
    /// `None` means `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// Read by transformers' attention when the config has it; else hidden / heads.
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "d_silu")]
    pub hidden_act: String,
    #[serde(default = "olmo2_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "olmo2_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "olmo2_pad")]
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
    pub attention_dropout: f64,
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl Olmo2Config {
    pub fn num_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The embeddings, rotary tables, masks, final norm and heads (Llama's); the layers are
    /// [`Olmo2Layer`]s.
    pub fn spec(&self) -> Result<DecoderSpec> {
        let spec = DecoderSpec {
            model_type: "olmo2",
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_kv_heads(),
            head_dim: self.head_dim(),
            act: Activation::parse(&self.hidden_act).context("olmo2 hidden_act")?,
            rms_norm_eps: self.rms_norm_eps,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: false,
            attention_dropout: self.attention_dropout,
            rope: RopeConfig::parse(
                "olmo2",
                self.rope_theta,
                &crate::rope::standardized(
                    "olmo2",
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
            norm_style: RmsStyle::ScaledInF32,
            qk_norm: false,
            nope_layers: Vec::new(),
            rope_in_f32: true,
        };
        spec.validate()?;
        Ok(spec)
    }

    fn build_olmo2(
        &self,
        ld: &mut Loader,
        task: Head,
    ) -> Result<(Box<dyn Backbone + Send>, TaskHead)> {
        let spec = self.spec()?;
        spec.build_with(ld, task, |ld, prefix, _| Olmo2Layer::load(ld, prefix, &spec))
    }
}

/// `model_type: "olmo2"` (registered in [`crate::registry`]).
pub fn parse(value: Value) -> Result<Box<dyn Architecture>> {
    let c: Olmo2Config = serde_json::from_value(value).context("olmo2 config")?;
    c.spec()?;
    Ok(Box::new(c))
}

// PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING has no "olmo2": Llama's q/v.
llama_family_architecture!(Olmo2Config, "olmo2", targets: ["q_proj", "v_proj"], build: build_olmo2);

/// One OLMo 2 decoder layer (`model.layers.{i}`): Llama's projections (same module names)
/// without `input_layernorm`, its `post_attention_layernorm` applied to the attention output,
/// the whole-projection query and key norms, and `post_feedforward_layernorm`.
#[derive(Debug)]
pub struct Olmo2Layer {
    /// `self_attn.{q,k,v,o}_proj`, `post_attention_layernorm`, `mlp.{gate,up,down}_proj`.
    pub base: LlamaLayer,
    /// Over the whole projections, before the heads.
    pub q_norm: RmsNorm,
    pub k_norm: RmsNorm,
    pub post_feedforward_layernorm: RmsNorm,
    /// `Some(sliding_window)` on an OLMo 3 sliding layer, which also takes the local rotary
    /// tables ([`LayerCtx::with_local_rope`]).
    pub window: Option<i64>,
}

impl Olmo2Layer {
    pub fn load(ld: &mut Loader, p: &str, cfg: &DecoderSpec) -> Result<Self> {
        let base = LlamaLayer::load_parts(ld, p, cfg, false)?;
        let (nh, nkv, d) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
        let mut norm = |n: &str, width: i64| {
            ld.rms_norm_with(&format!("{p}.{n}"), width, cfg.rms_norm_eps, cfg.norm_style)
        };
        Ok(Olmo2Layer {
            base,
            q_norm: norm("self_attn.q_norm", nh * d)?,
            k_norm: norm("self_attn.k_norm", nkv * d)?,
            post_feedforward_layernorm: norm("post_feedforward_layernorm", cfg.hidden_size)?,
            window: None,
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
        let ctx = if self.window.is_some() {
            local = ctx.with_local_rope();
            &local
        } else {
            ctx
        };
        let l = &self.base;
        let whole = Some((&self.q_norm, &self.k_norm));
        let (q, k, v) = l.attention_inputs(x, ctx, train, whole, cache);
        let mask = ctx.layer_mask(self.window);
        let a = sdpa(&q, &k, &v, &mask, l.attention_dropout, train, None);
        let a = l.o_proj.forward_t(&ctx.merge_heads(&a), train);
        let x = ctx.query_rows(x) + l.post_attention_layernorm.forward(&a);
        let m = l.mlp(&x, train);
        x + self.post_feedforward_layernorm.forward(&m)
    }
}

impl Block for Olmo2Layer {
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

    /// transformers' defaults: RMSNorm eps 1e-5, pad id 1, untied, every head a key-value head.
    #[test]
    fn defaults_follow_transformers() {
        let a = parse(serde_json::json!({"model_type": "olmo2"})).unwrap();
        let c = a.as_any().downcast_ref::<Olmo2Config>().unwrap();
        let s = c.spec().unwrap();
        assert_eq!((s.rms_norm_eps, s.pad_token_id, s.kv_heads), (1e-5, Some(1), 32));
        assert!(!s.tie_word_embeddings);
        assert_eq!(s.norm_style, RmsStyle::ScaledInF32);
        assert_eq!(a.recommended_lora_modules().0, ["q_proj", "v_proj"]);
        let a = parse(serde_json::json!({"model_type": "olmo2", "hidden_size": 32,
            "num_attention_heads": 4, "head_dim": 16}))
        .unwrap();
        let c = a.as_any().downcast_ref::<Olmo2Config>().unwrap();
        assert_eq!(c.spec().unwrap().head_dim, 16);
    }
}
