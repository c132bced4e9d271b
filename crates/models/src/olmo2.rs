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

use loraplus_core::{FusedLinears, LoraLinear, WeightLayout};

use crate::arch::{default_initializer_range, Activation, Architecture, CommonConfig};
use crate::attention::{sdpa, KvCache, LayerCtx};
use crate::backbone::{Backbone, Block, Loader, RmsNorm, RmsStyle};
use crate::heads::{Head, TaskHead};
use crate::llama::{d_silu, llama_family_architecture, rotary_heads, DecoderSpec};
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
                &None,
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

/// One OLMo 2 decoder layer (`model.layers.{i}`).
#[derive(Debug)]
pub struct Olmo2Layer {
    /// `q_proj`, `k_proj`, `v_proj` as one product.
    pub qkv: FusedLinears,
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
    /// Over the whole projections, before the heads.
    pub q_norm: RmsNorm,
    pub k_norm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
    /// `gate_proj`, `up_proj` as one product.
    pub gate_up: FusedLinears,
    pub gate_proj: LoraLinear,
    pub up_proj: LoraLinear,
    pub down_proj: LoraLinear,
    pub post_feedforward_layernorm: RmsNorm,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub act: Activation,
    pub attention_dropout: f64,
    /// `Some(sliding_window)` on an OLMo 3 sliding layer, which also takes the local rotary
    /// tables ([`LayerCtx::with_local_rope`]).
    pub window: Option<i64>,
}

impl Olmo2Layer {
    pub fn load(ld: &mut Loader, p: &str, cfg: &DecoderSpec) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (nh, nkv, d) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
        let name = |n: &str| format!("{p}.{n}");
        let norm = |ld: &mut Loader, n: &str, width: i64| {
            ld.rms_norm_with(&name(n), width, cfg.rms_norm_eps, cfg.norm_style)
        };
        let attn = ["q_proj", "k_proj", "v_proj"].map(|n| name(&format!("self_attn.{n}")));
        let (qkv, members) = ld.fused_linears(
            &[
                (&attn[0], h, nh * d),
                (&attn[1], h, nkv * d),
                (&attn[2], h, nkv * d),
            ],
            cfg.qkv_bias,
        )?;
        let [q_proj, k_proj, v_proj]: [LoraLinear; 3] = members
            .try_into()
            .map_err(|_| anyhow::anyhow!("{p}: expected 3 attention projections"))?;
        let o_proj = ld.linear(
            &name("self_attn.o_proj"),
            nh * d,
            h,
            cfg.o_bias,
            WeightLayout::OutIn,
        )?;
        let mlp = ["gate_proj", "up_proj"].map(|n| name(&format!("mlp.{n}")));
        let (gate_up, members) = ld.fused_linears(&[(&mlp[0], h, i), (&mlp[1], h, i)], false)?;
        let [gate_proj, up_proj]: [LoraLinear; 2] = members
            .try_into()
            .map_err(|_| anyhow::anyhow!("{p}: expected gate and up projections"))?;
        Ok(Olmo2Layer {
            qkv,
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm: norm(ld, "self_attn.q_norm", nh * d)?,
            k_norm: norm(ld, "self_attn.k_norm", nkv * d)?,
            post_attention_layernorm: norm(ld, "post_attention_layernorm", h)?,
            gate_up,
            gate_proj,
            up_proj,
            down_proj: ld.linear(&name("mlp.down_proj"), i, h, false, WeightLayout::OutIn)?,
            post_feedforward_layernorm: norm(ld, "post_feedforward_layernorm", h)?,
            heads: nh,
            kv_heads: nkv,
            head_dim: d,
            act: cfg.act,
            attention_dropout: cfg.attention_dropout,
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
        let d = self.head_dim;
        let (q_width, kv_width) = (self.heads * d, self.kv_heads * d);
        let (q, kv) = if ctx.queries.is_some() {
            // Query for the returned rows only; key and value for every row.
            let q = self.q_proj.forward_t(&ctx.query_rows(x), train);
            let kv = self
                .qkv
                .forward_t(&[&self.k_proj, &self.v_proj], 1, x, train);
            (ctx.query_heads(&self.q_norm.forward(&q), self.heads, d), ctx.unpack(&kv))
        } else {
            let qkv = self
                .qkv
                .forward_t(&[&self.q_proj, &self.k_proj, &self.v_proj], 0, x, train);
            let qkv = ctx.unpack(&qkv);
            let q = self.q_norm.forward(&qkv.narrow(-1, 0, q_width));
            (ctx.heads(&q, self.heads, d), qkv.narrow(-1, q_width, 2 * kv_width))
        };
        // The key norm spans every key head: before the split into heads.
        let kv = Tensor::cat(
            &[
                self.k_norm.forward(&kv.narrow(-1, 0, kv_width)),
                kv.narrow(-1, kv_width, kv_width),
            ],
            -1,
        );
        let (q, k, v) = rotary_heads(ctx, q, &kv, (self.kv_heads, d), None, true, cache);
        let windowed;
        let mask = match self.window {
            Some(w) => {
                windowed = ctx.windowed_query_mask(w);
                &windowed
            }
            None => ctx.query_mask(),
        };
        let a = sdpa(&q, &k, &v, mask, self.attention_dropout, train, None);
        let a = self.o_proj.forward_t(&ctx.merge_heads(&a), train);
        let x = ctx.query_rows(x) + self.post_attention_layernorm.forward(&a);
        let gate_up = self
            .gate_up
            .forward_t(&[&self.gate_proj, &self.up_proj], 0, &x, train)
            .split(self.down_proj.in_features(), -1);
        let m = self
            .down_proj
            .forward_t(&(self.act.apply(&gate_up[0]) * &gate_up[1]), train);
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
